from django.conf import settings
from django.db import models

P = settings.PGJIT_TABLE_PREFIX


class Author(models.Model):
    name = models.CharField(max_length=200)

    class Meta:
        db_table = f"{P}author"


class Book(models.Model):
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="books")
    title = models.CharField(max_length=200, db_index=True)
    published_on = models.DateField(null=True)

    class Meta:
        db_table = f"{P}book"
        indexes = [models.Index(fields=["published_on"], name=f"{P}pub_idx")]

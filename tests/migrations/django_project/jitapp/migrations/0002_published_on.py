from django.conf import settings
from django.db import migrations, models

P = settings.PGJIT_TABLE_PREFIX


# Django's foreign keys are DEFERRABLE INITIALLY DEFERRED: rows changed here
# would leave trigger events pending until COMMIT, and PostgreSQL refuses to
# ALTER a table that has some ("cannot ALTER TABLE ... because it has pending
# trigger events", 55006) -- the reverse of the AlterField below runs in the
# same transaction. Checking the constraints at once leaves none pending.
def constraints_now(schema_editor):
    schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def add_author(apps, schema_editor):
    constraints_now(schema_editor)
    Author = apps.get_model("jitapp", "Author")
    Book = apps.get_model("jitapp", "Book")
    ada = Author.objects.create(name="Ada " + "L" * 150)  # needs the longer column
    Book.objects.create(author=ada, title="Notes")


def remove_author(apps, schema_editor):
    constraints_now(schema_editor)
    apps.get_model("jitapp", "Author").objects.filter(name__startswith="Ada ").delete()


class Migration(migrations.Migration):
    dependencies = [("jitapp", "0001_initial")]

    operations = [
        migrations.AddField(model_name="book", name="published_on", field=models.DateField(null=True)),
        migrations.AddIndex(model_name="book", index=models.Index(fields=["published_on"], name=f"{P}pub_idx")),
        migrations.AlterField(model_name="author", name="name", field=models.CharField(max_length=200)),
        migrations.RunPython(add_author, remove_author),
    ]

"""authors and books: serial and identity keys, a foreign key, indexes, a sequence

Revision ID: 0001
Revises:
"""
import os

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

P = os.environ["PGJIT_MIG_PREFIX"]


def upgrade() -> None:
    authors = op.create_table(
        f"{P}_authors",
        sa.Column("id", sa.Integer, primary_key=True),  # SERIAL: a sequence owned by the column
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("email", sa.String(200), nullable=True),
    )
    op.create_index(f"{P}_authors_email", f"{P}_authors", ["email"], unique=True)
    op.execute(sa.schema.CreateSequence(sa.Sequence(f"{P}_isbn_seq", start=1000)))
    books = op.create_table(
        f"{P}_books",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("author_id", sa.Integer, sa.ForeignKey(f"{P}_authors.id", ondelete="CASCADE"), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
    )
    op.create_index(f"{P}_books_title", f"{P}_books", ["title"])
    op.bulk_insert(authors, [{"id": 1, "name": "Ada", "email": "ada@example.com"}])
    op.bulk_insert(books, [{"author_id": 1, "title": "Notes"}])


def downgrade() -> None:
    op.drop_index(f"{P}_books_title", table_name=f"{P}_books")
    op.drop_table(f"{P}_books")
    op.execute(sa.schema.DropSequence(sa.Sequence(f"{P}_isbn_seq")))
    op.drop_index(f"{P}_authors_email", table_name=f"{P}_authors")
    op.drop_table(f"{P}_authors")

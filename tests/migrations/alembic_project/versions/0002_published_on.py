"""books.published_on with an index; longer authors.name; books.title nullable

Revision ID: 0002
Revises: 0001
"""
import os

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

P = os.environ["PGJIT_MIG_PREFIX"]


def upgrade() -> None:
    op.add_column(f"{P}_books", sa.Column("published_on", sa.Date, nullable=True))
    op.create_index(f"{P}_books_published_on", f"{P}_books", ["published_on"])
    op.alter_column(f"{P}_authors", "name", type_=sa.String(250), existing_type=sa.String(100), existing_nullable=False)
    op.alter_column(f"{P}_books", "title", nullable=True, existing_type=sa.String(200))


def downgrade() -> None:
    op.alter_column(f"{P}_books", "title", nullable=False, existing_type=sa.String(200))
    op.alter_column(f"{P}_authors", "name", type_=sa.String(100), existing_type=sa.String(250), existing_nullable=False)
    op.drop_index(f"{P}_books_published_on", table_name=f"{P}_books")
    op.drop_column(f"{P}_books", "published_on")

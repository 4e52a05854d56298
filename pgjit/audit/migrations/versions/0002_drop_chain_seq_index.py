"""Drop the (chain, seq) index: nothing looks records up by it (verify reads
every record and orders each chain itself), and keeping it cost every insert
a third B-tree update (BENCHMARKS.md, audit trail).

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("audit_records_chain_seq", table_name="audit_records")


def downgrade() -> None:
    op.create_index("audit_records_chain_seq", "audit_records", ["chain", "seq"])

"""The audit records table: one hash chain per gateway process.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_records",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("chain", sa.String(32), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("at", sa.String(32), nullable=False),
        sa.Column("session_id", sa.String(32)),
        sa.Column("person", sa.Text),
        sa.Column("target", sa.Text),
        sa.Column("decision", sa.String(16)),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("prev", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("audit_records_chain_seq", "audit_records", ["chain", "seq"])
    op.create_index("audit_records_session", "audit_records", ["session_id", "seq"])
    op.create_index("audit_records_at", "audit_records", ["at"])


def downgrade() -> None:
    op.drop_table("audit_records")

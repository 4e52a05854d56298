"""Approval requests: statements held for a human's approval, and their
decisions (pgjit/approvals/store.py).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "approval_requests",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("person", sa.Text, nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("session_id", sa.String(32)),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("fingerprint", sa.String(64)),
        sa.Column("param_hash", sa.String(64), nullable=False),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("approvers", sa.Text, nullable=False),
        sa.Column("required", sa.Integer, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("expires", sa.Float, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("decisions", sa.Text, nullable=False),
        sa.Column("evidence", sa.Text),
        sa.Column("updated", sa.Float, nullable=False),
        sa.Column("used", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("approval_requests_status", "approval_requests", ["status", "updated"])
    op.create_index("approval_requests_binding", "approval_requests", ["person", "target", "fingerprint"])


def downgrade() -> None:
    op.drop_table("approval_requests")

"""Add the retraining tables and a server default for labels.imported_at.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 21:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "retraining_runs",
        sa.Column("flow_run_id", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("new_labels", sa.Integer(), nullable=False),
        sa.Column("labelled_instances", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("flow_run_id", name=op.f("pk_retraining_runs")),
    )
    op.create_table(
        "model_candidates",
        sa.Column("flow_run_id", sa.String(length=64), nullable=False),
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.Column("base_version", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("published_version", sa.Integer(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("checkpoint_path", sa.Text(), nullable=False),
        sa.Column("roc_curve_path", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["flow_run_id"], ["retraining_runs.flow_run_id"],
            name=op.f("fk_model_candidates_flow_run_id_retraining_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("flow_run_id", "model_name", name=op.f("pk_model_candidates")),
    )
    op.create_table(
        "ensemble_configurations",
        sa.Column("flow_run_id", sa.String(length=64), nullable=False),
        sa.Column("model_versions", sa.Text(), nullable=False),
        sa.Column("weights", sa.JSON(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("target_sensitivity", sa.Float(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["flow_run_id"], ["retraining_runs.flow_run_id"],
            name=op.f("fk_ensemble_configurations_flow_run_id_retraining_runs"),
            ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("flow_run_id", name=op.f("pk_ensemble_configurations")),
    )
    with op.batch_alter_table("ensemble_configurations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ensemble_configurations_model_versions"),
                              ["model_versions"], unique=False)
    with op.batch_alter_table("labels", schema=None) as batch_op:
        batch_op.alter_column("imported_at", existing_type=sa.DateTime(timezone=True),
                              existing_nullable=False, server_default=sa.func.now())


def downgrade() -> None:
    with op.batch_alter_table("labels", schema=None) as batch_op:
        batch_op.alter_column("imported_at", existing_type=sa.DateTime(timezone=True),
                              existing_nullable=False, server_default=None)
    with op.batch_alter_table("ensemble_configurations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ensemble_configurations_model_versions"))
    op.drop_table("ensemble_configurations")
    op.drop_table("model_candidates")
    op.drop_table("retraining_runs")

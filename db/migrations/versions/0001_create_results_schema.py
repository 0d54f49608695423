"""Create the results schema: instances, scores, second opinions, outcomes, models, labels.

Revision ID: 0001
Revises: (none)
Create Date: 2026-12-04 20:45:22.785364
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('duplicate_records',
    sa.Column('claim_id', sa.String(length=36), nullable=False),
    sa.Column('file_name', sa.Text(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('flow_run_id', sa.String(length=64), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('claim_id', name=op.f('pk_duplicate_records'))
    )
    with op.batch_alter_table('duplicate_records', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_duplicate_records_sop_instance_uid'), ['sop_instance_uid'], unique=False)

    op.create_table('instances',
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('accession_number', sa.String(length=64), nullable=True),
    sa.Column('patient_id', sa.String(length=64), nullable=True),
    sa.Column('study_date', sa.Date(), nullable=True),
    sa.Column('laterality', sa.String(length=8), nullable=False),
    sa.Column('view', sa.String(length=16), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('file_name', sa.Text(), nullable=False),
    sa.Column('archive_path', sa.Text(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('sop_instance_uid', name=op.f('pk_instances'))
    )
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instances_accession_number'), ['accession_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_instances_study_instance_uid'), ['study_instance_uid'], unique=False)

    op.create_table('labels',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('laterality', sa.String(length=8), nullable=True),
    sa.Column('label', sa.String(length=16), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('label_date', sa.Date(), nullable=True),
    sa.Column('imported_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_labels')),
    sa.UniqueConstraint('sop_instance_uid', 'study_instance_uid', 'laterality', 'source', name='uq_labels_target_source')
    )
    with op.batch_alter_table('labels', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_labels_sop_instance_uid'), ['sop_instance_uid'], unique=False)
        batch_op.create_index(batch_op.f('ix_labels_study_instance_uid'), ['study_instance_uid'], unique=False)

    op.create_table('model_versions',
    sa.Column('model_name', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('input_size', sa.Integer(), nullable=False),
    sa.Column('weights_source', sa.String(length=32), nullable=False),
    sa.Column('warning', sa.Text(), nullable=True),
    sa.Column('threshold', sa.Float(), nullable=True),
    sa.Column('metrics', sa.JSON(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('model_name', 'version', name=op.f('pk_model_versions'))
    )
    op.create_table('processing_runs',
    sa.Column('flow_run_id', sa.String(length=64), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('files_claimed', sa.Integer(), nullable=False),
    sa.Column('scored', sa.Integer(), nullable=False),
    sa.Column('duplicates', sa.Integer(), nullable=False),
    sa.Column('quarantined', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('flow_run_id', name=op.f('pk_processing_runs'))
    )
    op.create_table('quarantine_records',
    sa.Column('claim_id', sa.String(length=36), nullable=False),
    sa.Column('file_name', sa.Text(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('content_hash', sa.String(length=64), nullable=True),
    sa.Column('reason_code', sa.String(length=48), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('quarantine_path', sa.Text(), nullable=True),
    sa.Column('flow_run_id', sa.String(length=64), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('claim_id', name=op.f('pk_quarantine_records'))
    )
    with op.batch_alter_table('quarantine_records', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_quarantine_records_reason_code'), ['reason_code'], unique=False)
        batch_op.create_index(batch_op.f('ix_quarantine_records_sop_instance_uid'), ['sop_instance_uid'], unique=False)

    op.create_table('model_scores',
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('model_name', sa.String(length=64), nullable=False),
    sa.Column('model_version', sa.Integer(), nullable=False),
    sa.Column('probability', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['sop_instance_uid'], ['instances.sop_instance_uid'], name=op.f('fk_model_scores_sop_instance_uid_instances'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('sop_instance_uid', 'model_name', name=op.f('pk_model_scores'))
    )
    op.create_table('second_opinions',
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('ensemble_probability', sa.Float(), nullable=False),
    sa.Column('threshold', sa.Float(), nullable=False),
    sa.Column('category', sa.String(length=32), nullable=False),
    sa.Column('models_agreeing', sa.Integer(), nullable=False),
    sa.Column('models_total', sa.Integer(), nullable=False),
    sa.Column('model_versions', sa.Text(), nullable=False),
    sa.Column('preprocessing_version', sa.String(length=32), nullable=False),
    sa.Column('flow_run_id', sa.String(length=64), nullable=False),
    sa.Column('processed_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['sop_instance_uid'], ['instances.sop_instance_uid'], name=op.f('fk_second_opinions_sop_instance_uid_instances'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('sop_instance_uid', name=op.f('pk_second_opinions'))
    )
    with op.batch_alter_table('second_opinions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_second_opinions_flow_run_id'), ['flow_run_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('second_opinions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_second_opinions_flow_run_id'))

    op.drop_table('second_opinions')
    op.drop_table('model_scores')
    with op.batch_alter_table('quarantine_records', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_quarantine_records_sop_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_quarantine_records_reason_code'))

    op.drop_table('quarantine_records')
    op.drop_table('processing_runs')
    op.drop_table('model_versions')
    with op.batch_alter_table('labels', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_labels_study_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_labels_sop_instance_uid'))

    op.drop_table('labels')
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instances_study_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_instances_accession_number'))

    op.drop_table('instances')
    with op.batch_alter_table('duplicate_records', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_duplicate_records_sop_instance_uid'))

    op.drop_table('duplicate_records')

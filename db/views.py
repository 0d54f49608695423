"""Reporting views: the stable interface that PACS integrations and reporting tools read.

Three views, one per level, with the columns documented in ``docs/reporting.md``:
- ``second_opinion_instances``: one row per scored SOP instance;
- ``second_opinion_breasts``: one row per study and laterality, taking the instance with the
  highest ensemble probability and listing the views present and which of CC and MLO are
  missing;
- ``second_opinion_studies``: one row per study, taking its most suspicious instance.

Each level has ``text_en`` and ``text_tr`` columns, rendered in SQL from the same templates as
the command line (`mammo.texts`), so a report reads the same wherever it is shown.

The SQL differs between PostgreSQL and SQLite only in number formatting and in how a sorted
list of views is aggregated. `view_statements` builds both from one definition.
Column names are a contract: add columns at the end, never rename or drop one without a new
view name.
"""

from __future__ import annotations

import string

from mammo.settings import MODEL_NAMES
from mammo.texts import TEXTS

VIEW_NAMES = ("second_opinion_instances", "second_opinion_breasts", "second_opinion_studies")

#: The standard screening views; a breast row lists which of them are missing.
SCREENING_VIEWS = ("CC", "MLO")


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _format_number(expression: str, dialect: str) -> str:
    if dialect == "postgresql":
        return f"to_char(({expression})::numeric, 'FM0.00')"
    return f"printf('%.2f', {expression})"


def _category_case(column: str, language: str) -> str:
    return (f"CASE {column} "
            f"WHEN 'suspicious' THEN {_sql_string(TEXTS['category.suspicious'][language])} "
            f"ELSE {_sql_string(TEXTS['category.not_suspicious'][language])} END")


def render_text_sql(key: str, language: str, fields: dict[str, str], dialect: str) -> str:
    """Translate the `mammo.texts` template ``key`` into a SQL string expression.

    ``fields`` maps each placeholder to a SQL expression; a ``:.2f`` format becomes the
    dialect's two-decimal formatting, anything else is cast to text.
    """
    parts: list[str] = []
    for literal, field, spec, _ in string.Formatter().parse(TEXTS[key][language]):
        if literal:
            parts.append(_sql_string(literal))
        if field is None:
            continue
        expression = fields[field]
        if spec == ".2f":
            parts.append(_format_number(expression, dialect))
        elif field == "category":
            parts.append(_category_case(expression, language))
        else:
            parts.append(f"CAST({expression} AS TEXT)")
    return " || ".join(parts)


def _text_columns(prefix: str, dialect: str) -> str:
    fields = {
        "category": f"{prefix}category",
        "probability": f"{prefix}probability",
        "threshold": f"{prefix}threshold",
        "agreeing": f"{prefix}models_agreeing",
        "total": f"{prefix}models_total",
    }
    return ",\n       ".join(
        f"{render_text_sql('opinion.summary', language, fields, dialect)} AS text_{language}"
        for language in ("en", "tr"))


def _instances_sql(dialect: str) -> str:
    model_columns = ",\n       ".join(
        f"MAX(CASE WHEN s.model_name = '{name}' THEN s.probability END) AS {name}_probability,"
        f"\n       MAX(CASE WHEN s.model_name = '{name}' THEN s.model_version END) "
        f"AS {name}_version"
        for name in MODEL_NAMES)
    return f"""
CREATE VIEW second_opinion_instances AS
SELECT base.*,
       {_text_columns('base.', dialect)}
FROM (
SELECT i.accession_number,
       i.study_instance_uid,
       i.series_instance_uid,
       i.sop_instance_uid,
       i.patient_id,
       i.study_date,
       i.laterality,
       i.view,
       o.category,
       o.ensemble_probability AS probability,
       o.threshold,
       o.models_agreeing,
       o.models_total,
       o.model_versions,
       {model_columns},
       o.preprocessing_version,
       o.flow_run_id,
       o.processed_at
FROM instances i
JOIN second_opinions o ON o.sop_instance_uid = i.sop_instance_uid
LEFT JOIN model_scores s ON s.sop_instance_uid = i.sop_instance_uid
GROUP BY i.accession_number, i.study_instance_uid, i.series_instance_uid,
         i.sop_instance_uid, i.patient_id, i.study_date, i.laterality, i.view, o.category,
         o.ensemble_probability, o.threshold, o.models_agreeing, o.models_total,
         o.model_versions, o.preprocessing_version, o.flow_run_id, o.processed_at
) base
"""


def _views_present(dialect: str, where: str) -> str:
    if dialect == "postgresql":
        return (f"(SELECT string_agg(DISTINCT v.view, ',' ORDER BY v.view) "
                f"FROM second_opinion_instances v WHERE {where})")
    # SQLite before 3.44 has no ORDER BY inside aggregates; group_concat keeps the order of
    # the sorted subquery.
    return (f"(SELECT group_concat(view, ',') FROM (SELECT DISTINCT v.view AS view "
            f"FROM second_opinion_instances v WHERE {where} ORDER BY v.view))")


def _views_missing(where: str) -> str:
    checks = [
        f"CASE WHEN NOT EXISTS (SELECT 1 FROM second_opinion_instances v WHERE {where} "
        f"AND v.view = '{view}') THEN '{view}' END"
        for view in SCREENING_VIEWS
    ]
    # COALESCE of the pair keeps one name or joins both with a comma.
    first, second = checks
    return (f"COALESCE(({first}) || ',' || ({second}), ({first}), ({second}), '')")


def _breasts_sql(dialect: str) -> str:
    same_breast = ("v.study_instance_uid = ranked.study_instance_uid "
                   "AND v.laterality = ranked.laterality")
    return f"""
CREATE VIEW second_opinion_breasts AS
SELECT ranked.accession_number,
       ranked.study_instance_uid,
       ranked.patient_id,
       ranked.study_date,
       ranked.laterality,
       ranked.category,
       ranked.probability,
       ranked.threshold,
       ranked.models_agreeing,
       ranked.models_total,
       ranked.model_versions,
       ranked.sop_instance_uid AS most_suspicious_sop_instance_uid,
       ranked.view AS most_suspicious_view,
       ranked.instance_count,
       {_views_present(dialect, same_breast)} AS views_present,
       {_views_missing(same_breast)} AS views_missing,
       ranked.processed_at,
       {_text_columns('ranked.', dialect)}
FROM (
    SELECT v.*,
           ROW_NUMBER() OVER (PARTITION BY v.study_instance_uid, v.laterality
                              ORDER BY v.probability DESC, v.sop_instance_uid) AS rank_in_breast,
           COUNT(*) OVER (PARTITION BY v.study_instance_uid, v.laterality) AS instance_count
    FROM second_opinion_instances v
) ranked
WHERE ranked.rank_in_breast = 1
"""


def _studies_sql(dialect: str) -> str:
    same_study = "v.study_instance_uid = ranked.study_instance_uid"
    return f"""
CREATE VIEW second_opinion_studies AS
SELECT ranked.accession_number,
       ranked.study_instance_uid,
       ranked.patient_id,
       ranked.study_date,
       ranked.category,
       ranked.probability,
       ranked.threshold,
       ranked.models_agreeing,
       ranked.models_total,
       ranked.model_versions,
       ranked.laterality AS most_suspicious_laterality,
       ranked.sop_instance_uid AS most_suspicious_sop_instance_uid,
       ranked.instance_count,
       (SELECT COUNT(DISTINCT v.laterality) FROM second_opinion_instances v
        WHERE {same_study}) AS breast_count,
       (SELECT COUNT(*) FROM second_opinion_instances v
        WHERE {same_study} AND v.category = 'suspicious') AS suspicious_instance_count,
       ranked.processed_at,
       {_text_columns('ranked.', dialect)}
FROM (
    SELECT v.*,
           ROW_NUMBER() OVER (PARTITION BY v.study_instance_uid
                              ORDER BY v.probability DESC, v.sop_instance_uid) AS rank_in_study,
           COUNT(*) OVER (PARTITION BY v.study_instance_uid) AS instance_count
    FROM second_opinion_instances v
) ranked
WHERE ranked.rank_in_study = 1
"""


def view_statements(dialect: str) -> list[str]:
    """Return the CREATE VIEW statements for ``dialect`` ("postgresql" or "sqlite")."""
    if dialect not in ("postgresql", "sqlite"):
        raise NotImplementedError(f"reporting views support PostgreSQL and SQLite, not "
                                  f"{dialect!r}")
    return [_instances_sql(dialect), _breasts_sql(dialect), _studies_sql(dialect)]


def drop_statements() -> list[str]:
    """Return DROP VIEW statements, dependants first."""
    return [f"DROP VIEW IF EXISTS {name}" for name in reversed(VIEW_NAMES)]

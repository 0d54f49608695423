-- Runs once, when the PostgreSQL container starts on an empty data volume. The Prefect
-- server keeps its state in a database of its own, next to the results database "mammo".
CREATE DATABASE prefect OWNER mammo;

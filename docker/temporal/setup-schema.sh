#!/bin/sh
# The one-shot schema set-up of docker-compose.yml (temporalio/admin-tools, or a local image
# with temporal-sql-tool): creates the `temporal` and `temporal_visibility` databases and
# brings their schemas to the version this server needs, from the schemas built into the
# tool. Safe on every start: existing databases are kept, setup-schema leaves a versioned
# schema alone, update-schema applies only the missing versions.
set -eu
SQL_PASSWORD=$(cat "${POSTGRES_PASSWORD_FILE:?names the file holding the PostgreSQL password}")
export SQL_PASSWORD
sql() {
  temporal-sql-tool --plugin postgres12 --ep "${POSTGRES_HOST:?}" --port "${POSTGRES_PORT:-5432}" --user "${POSTGRES_USER:?}" "$@"
}
for pair in temporal:temporal temporal_visibility:visibility; do
  db=${pair%%:*}
  schema=postgresql/v12/${pair#*:}
  sql --db "$db" create-database
  sql --db "$db" setup-schema -v 0.0
  sql --db "$db" update-schema --schema-name "$schema"
  echo "temporal-schema: $db is at the schema of $schema"
done

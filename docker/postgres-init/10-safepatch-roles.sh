#!/bin/sh
# Creates safepatch's database and its two roles. The postgres image runs this once, as the
# superuser, when it initialises an empty data directory (/docker-entrypoint-initdb.d); on a
# server of your own, run it once with PGHOST/PGUSER pointing at a superuser.
#
#   owner (SAFEPATCH_DB_OWNER, safepatch_owner): owns the database and its schema; runs
#     `safepatch db upgrade`, which also grants the application role its privileges
#     (app/db/grants.py: SAFEPATCH_DATABASE_APP_ROLE).
#   application (SAFEPATCH_DB_APP_USER, safepatch_app): the API and the workers. Owns nothing:
#     it cannot drop or alter tables, disable the audit trail's triggers, or change or delete
#     audit records.
#
# Passwords come from SAFEPATCH_DB_OWNER_PASSWORD and SAFEPATCH_DB_APP_PASSWORD (required).
set -eu

: "${SAFEPATCH_DB_OWNER_PASSWORD:?set SAFEPATCH_DB_OWNER_PASSWORD}"
: "${SAFEPATCH_DB_APP_PASSWORD:?set SAFEPATCH_DB_APP_PASSWORD}"

# The passwords reach psql as variables, so they are quoted by psql (:'...'), never by the shell.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    -v db="${SAFEPATCH_DB_NAME:-safepatch}" \
    -v owner="${SAFEPATCH_DB_OWNER:-safepatch_owner}" \
    -v app="${SAFEPATCH_DB_APP_USER:-safepatch_app}" \
    -v owner_password="$SAFEPATCH_DB_OWNER_PASSWORD" \
    -v app_password="$SAFEPATCH_DB_APP_PASSWORD" <<'SQL'
CREATE ROLE :"owner" LOGIN PASSWORD :'owner_password';
CREATE ROLE :"app" LOGIN PASSWORD :'app_password';
CREATE DATABASE :"db" OWNER :"owner";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"app";
\connect :"db"
-- Only the owner creates objects; the application role gets USAGE here and its table
-- privileges from `safepatch db upgrade`.
ALTER SCHEMA public OWNER TO :"owner";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"app";
SQL

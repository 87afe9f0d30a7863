-- Two roles for emoe-gate (run once by the postgres image on an empty data folder, as its superuser, in
-- POSTGRES_DB; by hand: psql -U postgres -d emoe -f docker/postgres-init.sql with the two variables set).
--   emoe_owner  owns the database and its tables; `emoe-gate migrate --app-role emoe_app` runs as it.
--   emoe_app    what the gateway and workers connect as: after that migrate it may INSERT into and SELECT
--               from the hash-chained tables (decisions, artifacts, reviews) and nothing more: no UPDATE,
--               DELETE, TRUNCATE, and no ALTER TABLE ... DISABLE TRIGGER (only an owner may).
-- Passwords come from the environment (psql 15+ `\getenv`): DB_OWNER_PASSWORD, DB_APP_PASSWORD.
\set ON_ERROR_STOP on
\getenv owner_password DB_OWNER_PASSWORD
\getenv app_password DB_APP_PASSWORD

CREATE ROLE emoe_owner LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'owner_password';
CREATE ROLE emoe_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD :'app_password';

ALTER DATABASE :"DBNAME" OWNER TO emoe_owner;
-- PostgreSQL 15+: the public schema belongs to the database's owner; nobody else may create in it
ALTER SCHEMA public OWNER TO emoe_owner;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE ALL ON DATABASE :"DBNAME" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"DBNAME" TO emoe_app;

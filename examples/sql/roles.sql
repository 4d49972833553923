-- Least-privilege roles for tollway's PostgreSQL ledger.
--
-- Run once, as the role that owns the ledger's tables (the one that ran the migrations: open
-- the ledger with it first, e.g. `tollway worker` at deploy time), connected with the ledger's
-- schema first on the search_path (the default: public). Safe to run again, and again after a
-- tollway upgrade adds tables.
--
--   psql "postgresql://owner@db/tollway" -f examples/sql/roles.sql
--
-- It makes two group roles, without login; give them to login roles of your own:
--
--   CREATE ROLE reports LOGIN PASSWORD '...' IN ROLE tollway_reporting;
--   CREATE ROLE tollway_app LOGIN PASSWORD '...' IN ROLE tollway_writer;
--
-- tollway_reporting  reads every table (dashboards, BI, exports); writes nothing.
-- tollway_writer     what the library, `tollway worker` and `tollway serve` need once the
--                    schema exists: read everything, add rows everywhere, change rows only
--                    where tollway itself changes them (the hook outbox, invoice numbers).
--                    Usage events, notices, invoices, credit notes, grants and plan changes
--                    are append-only to it: it cannot UPDATE or DELETE them. It cannot change
--                    the schema either: migrations run as the owner.

DO $roles$
DECLARE
    ledger_schema text := current_schema();
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tollway_reporting') THEN
        CREATE ROLE tollway_reporting NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tollway_writer') THEN
        CREATE ROLE tollway_writer NOLOGIN;
    END IF;

    EXECUTE format('GRANT USAGE ON SCHEMA %I TO tollway_reporting, tollway_writer', ledger_schema);

    -- Reporting: SELECT, on the tables there and on those later migrations add.
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO tollway_reporting', ledger_schema);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO tollway_reporting', ledger_schema);

    -- Writer: SELECT and INSERT everywhere (tables to come too), sequences for their ids.
    EXECUTE format('GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA %I TO tollway_writer', ledger_schema);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT, INSERT ON TABLES TO tollway_writer', ledger_schema);
    EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO tollway_writer', ledger_schema);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT USAGE, SELECT ON SEQUENCES TO tollway_writer', ledger_schema);

    -- ... and UPDATE / DELETE only where tollway changes rows: the hook outbox (a message's
    -- attempts, delivered messages pruned; aggregation buckets), the invoice numbering, and
    -- the control plane's token use and revocation and the audit log's head (never its rows).
    EXECUTE format('GRANT UPDATE, DELETE ON %I.hook_messages, %I.hook_buckets TO tollway_writer', ledger_schema, ledger_schema);
    EXECUTE format('GRANT UPDATE ON %I.billing_numbers TO tollway_writer', ledger_schema);
    EXECUTE format('GRANT UPDATE ON %I.admin_tokens, %I.admin_audit_head TO tollway_writer', ledger_schema, ledger_schema);
END
$roles$;

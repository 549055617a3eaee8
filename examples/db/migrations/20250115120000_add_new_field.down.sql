-- The seeds' rollback-migration.sql, without its BEGIN/COMMIT and its
-- IF EXISTS guard: db.migrate_down runs this file and the removal of
-- 20250115120000 from schema_migrations in one transaction, and only when
-- that version is applied.
ALTER TABLE orders DROP COLUMN IF EXISTS new_field;
-- Restore constraints (fails, and changes nothing, if rows with amount <= 0
-- were written meanwhile: fix them first).
ALTER TABLE orders ADD CONSTRAINT check_amount CHECK (amount > 0);

ALTER TABLE orders ADD COLUMN new_field text;
ALTER TABLE orders DROP CONSTRAINT check_amount;

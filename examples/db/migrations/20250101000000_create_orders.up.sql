CREATE TABLE orders (
    id bigint PRIMARY KEY,
    amount numeric NOT NULL,
    total numeric NOT NULL,
    CONSTRAINT check_amount CHECK (amount > 0)
);

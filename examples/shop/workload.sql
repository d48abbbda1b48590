-- What the monolith does all day: sign-ups, orders, payments, shipping.
insert into customers (email, name, password_hash) values
  ('ada@example.com', 'Ada Lovelace', 'x'),
  ('grace@example.com', 'Grace Hopper', 'y');

-- Checkout: two orders and their lines in one transaction, the lines written out of order.
-- One OrderPlaced each, with its lines by line number.
begin;
insert into orders (customer_id, total, tags) values (1, 120.50, '{gift}'), (2, 9.99, '{}');
insert into order_lines (order_id, line_no, sku, quantity, price) values
  (1, 2, 'TEA-100', 1, 20.50),
  (2, 1, 'MUG-7', 1, 9.99),
  (1, 1, 'POT-3', 2, 50.00);
insert into page_views (path) select '/checkout' from generate_series(1, 100);
commit;

-- A line added to order 2 later: OrderLinesAdded of order 2.
insert into order_lines (order_id, line_no, sku, quantity, price) values (2, 2, 'LID-7', 1, 0.50);

update orders set status = 'paid', paid_at = '2026-11-22 10:00:00+00' where id = 1;
update orders set total = 10.49 where id = 2;          -- not an event: no mapping says so
update orders set status = 'shipped' where id = 1;
update customers set email = 'ada@lovelace.example' where id = 1;
update orders set status = 'cancelled' where id = 2;

-- The application states events itself: an outbox row, inserted and deleted in one transaction
-- (one LoyaltyPointsGranted, its id the row's) ...
begin;
insert into outbox (id, aggregatetype, aggregateid, type, payload) values
  ('0b7e4a52-6f0e-4c1b-9d8e-2f64a7c1e001', 'Customer', '1', 'LoyaltyPointsGranted', '{"customer_id": 1, "points": 120}');
delete from outbox where id = '0b7e4a52-6f0e-4c1b-9d8e-2f64a7c1e001';
commit;

-- ... and a logical decoding message, no table at all (one CartAbandoned).
select pg_logical_emit_message(true, 'shop.events', '{"type": "CartAbandoned", "cart_id": 9, "items": 3}');

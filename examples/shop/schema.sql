-- The "monolith": a shop whose tables nobody dares to touch.
create type order_status as enum ('placed', 'paid', 'shipped', 'cancelled');
create domain money_amount as numeric(12, 2) check (value >= 0);

create table customers (
  id            bigserial primary key,
  email         text not null unique,
  name          text not null,
  password_hash text not null,
  created_at    timestamptz not null default now()
);
-- CustomerEmailChanged reads `changed`: updates must carry the old row.
alter table customers replica identity full;

create table orders (
  id          bigserial primary key,
  customer_id bigint not null references customers,
  status      order_status not null default 'placed',
  total       money_amount not null,
  tags        text[] not null default '{}',
  placed_at   timestamptz not null default now(),
  paid_at     timestamptz
);
-- OrderPaid reads old.status: updates must carry the old row.
alter table orders replica identity full;

-- An order's lines, written in the order's transaction: OrderPlaced carries them (collected
-- rows), and a line added later is an OrderLinesAdded of the order.
create table order_lines (
  id       bigserial primary key,
  order_id bigint not null references orders,
  line_no  int not null,
  sku      text not null,
  quantity int not null check (quantity > 0),
  price    money_amount not null
);

-- The outbox: where the application states an event itself, in the transaction of the fact
-- (the Debezium outbox event router's columns). It inserts the row and deletes it at once: the
-- table stays empty, and ficus reads the insert from the WAL.
create table outbox (
  id            uuid primary key,
  aggregatetype text not null,
  aggregateid   text not null,
  type          text not null,
  payload       jsonb not null
);

-- Not mapped: ficus never sees it, however busy it is.
create table page_views (
  id   bigserial primary key,
  path text not null,
  at   timestamptz not null default now()
);

-- The years before ficus: a customer who signed up long ago. `ficus backfill` turns her
-- into a CustomerRegistered event too (a snapshot event), so a new service misses nobody.
insert into customers (id, email, name, password_hash, created_at)
values (100, 'margaret@example.com', 'Margaret Hamilton', 'w', '2019-07-20 20:17:40+00');

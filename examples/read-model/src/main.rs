//! A read model built purely from events: the shop's customers, with how many orders each placed
//! and what each paid (minus refunds), in a SQLite database of its own.
//!
//! ```sh
//! ficus replay --to-sink stdout | shop-read-model read-model.db
//! ```
//!
//! It reads CloudEvents, one per line, from stdin, and applies each in a transaction with its id,
//! so an event seen twice — a replay started over, a repeat after a crash — changes nothing: the
//! model is exactly-once whatever feeds it. At the end of its input it prints the model.
//!
//! It never queries the monolith: this is the read side of CQRS, rebuilt at will from history.

use std::io::BufRead;

use anyhow::{Context, bail};
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use sqlx::{Sqlite, Transaction};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS applied (id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS customers (
  customer_id INTEGER PRIMARY KEY, email TEXT NOT NULL, orders INTEGER NOT NULL DEFAULT 0, paid_cents INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS orders (
  order_id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, status TEXT NOT NULL
);";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "read-model.db".into());
    let options = SqliteConnectOptions::new().filename(&path).create_if_missing(true);
    let pool = SqlitePool::connect_with(options).await.with_context(|| path.clone())?;
    sqlx::raw_sql(SCHEMA).execute(&pool).await?;
    let (mut applied, mut repeated) = (0, 0);
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Value = serde_json::from_str(&line).with_context(|| format!("line {}: not an event", n + 1))?;
        let id = event["id"].as_str().context("an event without an id")?;
        let mut tx = pool.begin().await?;
        let fresh = sqlx::query("INSERT INTO applied (id) VALUES (?) ON CONFLICT DO NOTHING")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if fresh {
            apply(&mut tx, &event).await.with_context(|| format!("event {id}"))?;
            applied += 1;
        } else {
            repeated += 1;
        }
        tx.commit().await?;
    }
    eprintln!("applied {applied} events ({repeated} seen before)");
    let rows: Vec<(i64, String, i64, i64)> =
        sqlx::query_as("SELECT customer_id, email, orders, paid_cents FROM customers ORDER BY customer_id")
            .fetch_all(&pool)
            .await?;
    for (id, email, orders, paid) in rows {
        println!(
            "customer {id} {email}: {orders} order(s), paid {}.{:02}",
            paid / 100,
            paid % 100
        );
    }
    Ok(())
}

/// What each event does to the model; events this model does not need are skipped.
async fn apply(tx: &mut Transaction<'_, Sqlite>, event: &Value) -> anyhow::Result<()> {
    let data = &event["data"];
    let int = |field: &str| {
        data[field]
            .as_i64()
            .with_context(|| format!("data.{field} is not a whole number"))
    };
    match event["type"].as_str().unwrap_or_default() {
        "CustomerRegistered" => {
            sqlx::query("INSERT INTO customers (customer_id, email) VALUES (?, ?) ON CONFLICT DO NOTHING")
                .bind(int("id")?)
                .bind(data["email"].as_str().unwrap_or_default())
                .execute(&mut **tx)
                .await?;
        }
        "CustomerEmailChanged" => {
            sqlx::query("UPDATE customers SET email = ? WHERE customer_id = ?")
                .bind(data["email"].as_str().unwrap_or_default())
                .bind(int("customer_id")?)
                .execute(&mut **tx)
                .await?;
        }
        "OrderPlaced" => {
            sqlx::query("INSERT INTO orders (order_id, customer_id, status) VALUES (?, ?, 'placed')")
                .bind(int("order_id")?)
                .bind(int("customer_id")?)
                .execute(&mut **tx)
                .await?;
            sqlx::query("UPDATE customers SET orders = orders + 1 WHERE customer_id = ?")
                .bind(int("customer_id")?)
                .execute(&mut **tx)
                .await?;
        }
        "OrderPaid" => move_money(tx, int("order_id")?, cents(&data["total"])?, "paid").await?,
        "OrderCancelled" => move_money(tx, int("order_id")?, -cents(&data["refund"])?, "cancelled").await?,
        _ => {}
    }
    Ok(())
}

/// Adds `cents` to what the order's customer paid and sets the order's status.
async fn move_money(tx: &mut Transaction<'_, Sqlite>, order: i64, cents: i64, status: &str) -> anyhow::Result<()> {
    let customer: Option<i64> = sqlx::query_scalar("SELECT customer_id FROM orders WHERE order_id = ?")
        .bind(order)
        .fetch_optional(&mut **tx)
        .await?;
    let Some(customer) = customer else {
        bail!("order {order} was never placed: replay from the start (the model needs OrderPlaced first)")
    };
    sqlx::query("UPDATE orders SET status = ? WHERE order_id = ?")
        .bind(status)
        .bind(order)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE customers SET paid_cents = paid_cents + ? WHERE customer_id = ?")
        .bind(cents)
        .bind(customer)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A money amount (a JSON number with its digits as written, like 120.50) in cents, exactly.
fn cents(v: &Value) -> anyhow::Result<i64> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        other => bail!("{other} is not an amount"),
    };
    let (sign, digits) = text.strip_prefix('-').map_or((1, text.as_str()), |t| (-1, t));
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let fraction = format!("{fraction:0<2}");
    if fraction.len() > 2 {
        bail!("{text} has more than two decimals");
    }
    Ok(sign * (whole.parse::<i64>()? * 100 + fraction.parse::<i64>()?))
}

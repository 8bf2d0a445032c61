//! `mirror-proxy demo`, run as a process: it runs to completion on loopback and its console
//! shows what README promises — the candidate's changed status and renamed field found, the
//! generated order id cancelled as noise by the baseline.

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_the_candidates_changes_and_the_noise() {
    // About 17 invalid orders in 1,000 requests: some reach the slow candidate in time.
    let (status, stdout, stderr) =
        support::run_to_exit(&["demo", "--requests", "1000", "--duration", "0s"]).await;
    assert!(status.success(), "{stdout}{stderr}");
    let orders = stdout
        .lines()
        .find(|line| line.trim_start().starts_with("POST /api/orders"))
        .unwrap_or_else(|| panic!("no orders line: {stdout}"));
    assert!(orders.contains("400 → 422"), "the changed status: {orders}");
    assert!(orders.contains("[noise: /order_id]"), "{orders}");
    let products = stdout
        .lines()
        .find(|line| line.trim_start().starts_with("GET /api/products/{id}"))
        .unwrap_or_else(|| panic!("no products line: {stdout}"));
    assert!(
        products.contains("body /price_cents"),
        "the renamed field: {products}"
    );
}

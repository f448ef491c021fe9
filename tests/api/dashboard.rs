//! The dashboard in a real browser (headless Chromium): it shows a running job's whole history
//! after a reload, follows it live without duplicates, and ends showing the finished job with
//! its epochs charted. A screenshot is saved as `target/test-artifacts/dashboard.png`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::browser::{chromium_or_skip, Browser};
use crate::common::*;

/// The job view's `data-*` attributes (the page's state, as the test reads it).
const VIEW: &str = "(() => { const j = document.getElementById('job'); return j.hidden ? null : {...j.dataset}; })()";

fn number(view: &Value, key: &str) -> i64 {
    view[key].as_str().and_then(|v| v.parse().ok()).unwrap_or(-1)
}

/// Evaluates `VIEW` until `done` accepts it, or panics with the last view after `timeout`.
async fn wait_for_view(browser: &mut Browser, timeout: Duration, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let view = browser.eval(VIEW).await;
        if done(&view) {
            return view;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}; the page shows {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stored_events(server: &TestServer, job_id: &str) -> Vec<Value> {
    let (status, history) = server.get(&format!("/v1/jobs/{job_id}/metrics")).await;
    assert_eq!(status, 200);
    history["events"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_history_follows_live_and_shows_the_end() {
    require_shared_data!();
    let Some(chromium) = chromium_or_skip() else { return };
    let server = TestServer::start().await;
    let dataset = upload_photos(&server, 16).await;

    // The shell and its assets are served from the binary.
    let page = server.client.get(server.url("/")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    for asset in
        ["/assets/app.js", "/assets/app.css", "/assets/vendor/uPlot.iife.min.js", "/assets/vendor/uPlot.LICENSE"]
    {
        assert_eq!(server.client.get(server.url(asset)).send().await.unwrap().status().as_u16(), 200, "{asset}");
    }

    let mut browser = Browser::launch(&chromium).await;

    // A long job, opened (and reloaded) in the middle: the page shows everything stored so far.
    let mut long = small_spec(&dataset);
    long["phases"][0]["epochs"] = json!(500);
    long["input"] = json!({"height": 64, "width": 64, "scale": 0.00784313725490196, "offset": -1.0});
    let (status, job) = server.post_json("/v1/jobs", &long).await;
    assert_eq!(status, 201, "{job}");
    let long_id = job["id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while stored_events(&server, &long_id).await.iter().filter(|e| e["event"] == "epoch").count() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the long job did not reach two epochs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for attempt in ["first load", "reload"] {
        let stored = stored_events(&server, &long_id).await;
        let (last_stored, epochs_stored) =
            (stored.len() as i64, stored.iter().filter(|e| e["event"] == "epoch").count() as i64);
        if attempt == "first load" {
            browser.navigate(&server.url(&format!("/?job={long_id}"))).await;
        } else {
            browser.call("Page.reload", json!({})).await;
        }
        let view = wait_for_view(&mut browser, Duration::from_secs(20), "the history so far", |v| {
            v["jobId"] == long_id.as_str() && number(v, "lastEventId") >= last_stored
        })
        .await;
        assert_eq!(view["jobState"], "running", "{attempt}: {view}");
        assert!(number(&view, "epochPoints") >= epochs_stored, "{attempt}: every stored epoch is charted: {view}");
        assert_eq!(
            number(&view, "events"),
            number(&view, "lastEventId"),
            "{attempt}: events 1..=last, each once: {view}"
        );
        // And it keeps following live.
        let view = wait_for_view(&mut browser, Duration::from_secs(20), "live events", |v| {
            number(v, "lastEventId") > last_stored + 5
        })
        .await;
        assert_eq!(
            number(&view, "events"),
            number(&view, "lastEventId"),
            "{attempt}: no duplicates while live: {view}"
        );
    }
    // Cancel from the page's button; the page sees the end and stops.
    browser.eval("document.getElementById('cancel').click()").await;
    let view =
        wait_for_view(&mut browser, Duration::from_secs(30), "the canceled state", |v| v["jobState"] == "canceled")
            .await;
    assert_eq!(number(&view, "events"), number(&view, "lastEventId"), "{view}");
    assert_eq!(
        number(&view, "lastEventId"),
        stored_events(&server, &long_id).await.len() as i64,
        "the page has every event"
    );
    assert_eq!(browser.eval("document.getElementById('conn').textContent").await, "ended");

    // A short job from start to end: two phases, three epochs, test metrics, checkpoints, model.
    let (status, job) = server.post_json("/v1/jobs", &small_spec(&dataset)).await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    browser.navigate(&server.url(&format!("/?job={id}"))).await;
    // The job's state turns `succeeded` one event before its `end`: wait for the whole history.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let total = loop {
        let stored = stored_events(&server, &id).await;
        if stored.last().is_some_and(|e| e["event"] == "end") {
            break stored.len() as i64;
        }
        assert!(tokio::time::Instant::now() < deadline, "the short job did not end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let view = wait_for_view(&mut browser, Duration::from_secs(60), "the finished job", |v| {
        v["jobId"] == id.as_str() && v["jobState"] == "succeeded" && number(v, "lastEventId") >= total
    })
    .await;
    assert_eq!(number(&view, "epochPoints"), 3, "2 head epochs + 1 fine-tuning epoch: {view}");
    assert_eq!(number(&view, "events"), number(&view, "lastEventId"), "{view}");
    assert_eq!(number(&view, "lastEventId"), stored_events(&server, &id).await.len() as i64);
    // The rest of the view, once its fetches are in.
    let counts = "JSON.stringify({checkpoints: document.querySelectorAll('#checkpoints tbody tr').length, \
        onnx: [...document.querySelectorAll('#checkpoints a.onnx')].map((a) => a.getAttribute('href')), \
        layers: document.querySelectorAll('#model tbody tr').length, \
        test: document.getElementById('test-metrics').hidden ? '' : document.getElementById('test-metrics').textContent, \
        charts: document.querySelectorAll('.uplot').length, \
        evaluation: document.getElementById('evaluation').hidden ? null : { \
          title: document.getElementById('eval-title').textContent, images: Number(document.getElementById('evaluation').dataset.images), \
          cells: [...document.querySelectorAll('#confusion tbody td')].reduce((n, td) => n + Number(td.textContent), 0), \
          classes: document.querySelectorAll('#per-class tbody tr').length, \
          worst: [...document.querySelectorAll('#worst img')].filter((i) => i.complete && i.naturalWidth > 0).length}})";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let counts = loop {
        let counts: Value = serde_json::from_str(browser.eval(counts).await.as_str().unwrap()).unwrap();
        if counts["checkpoints"].as_u64() >= Some(2)
            && counts["layers"].as_u64() > Some(0)
            && counts["evaluation"]["worst"].as_u64() > Some(0)
            || tokio::time::Instant::now() > deadline
        {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(counts["checkpoints"].as_u64().unwrap() >= 2, "{counts}");
    assert_eq!(counts["layers"], 11, "{counts}");
    // Each checkpoint's ONNX link is an export of it.
    let links = counts["onnx"].as_array().unwrap();
    assert_eq!(links.len() as u64, counts["checkpoints"].as_u64().unwrap(), "{counts}");
    let response = server.client.get(server.url(links[0].as_str().unwrap())).send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", links[0]);
    assert_eq!(response.headers()["content-type"], "application/onnx");
    assert!(counts["test"].as_str().unwrap().starts_with("Test set: loss"), "{counts}");
    assert_eq!(counts["charts"], 4, "{counts}");
    // The final weights' test-set confusion matrix and per-class table, as the API reports them.
    let (_, evaluation) = server.get(&format!("/v1/jobs/{id}/evaluation")).await;
    let shown = &counts["evaluation"];
    assert!(shown["title"].as_str().unwrap().starts_with("Test set, final weights"), "{counts}");
    assert_eq!(shown["images"], evaluation["test"]["images"], "{counts}");
    assert_eq!(shown["cells"], evaluation["test"]["images"], "every test image is in one cell: {counts}");
    assert_eq!(shown["classes"], 2, "{counts}");
    let worst = evaluation["test"]["worst"].as_array().unwrap().len() as u64;
    assert_eq!(shown["worst"], worst, "every worst-classified test image shows, loaded: {counts}");

    // Both jobs ticked for comparison: one validation line each, from their stored epochs.
    browser.eval("document.querySelectorAll('#jobs input.compare').forEach((c) => c.click())").await;
    let compare =
        "(() => { const c = document.getElementById('compare'); return c.hidden ? null : {...c.dataset}; })()";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let shown = loop {
        let shown = browser.eval(compare).await;
        if number(&shown, "jobs") == 2 || tokio::time::Instant::now() > deadline {
            break shown;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(number(&shown, "jobs"), 2, "{shown}");
    assert!(number(&shown, "points") >= 3, "the finished job's 3 epochs at least: {shown}");
    assert_eq!(browser.eval("document.querySelectorAll('#compare .uplot').length").await, 2);

    let png = browser.screenshot_png().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dashboard.png"), png).unwrap();
    drop(browser);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_submit_form_shows_a_validation_error_beside_its_field() {
    require_shared_data!();
    let Some(chromium) = chromium_or_skip() else { return };
    let server = TestServer::start_with(|c| c.workers = 0).await;
    let dataset = upload_photos(&server, 4).await;
    let mut browser = Browser::launch(&chromium).await;
    browser.navigate(&server.url("/")).await;
    let select = format!("document.querySelector('#job-form select').value = '{dataset}'");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while browser.eval("document.querySelectorAll('#job-form select option').length").await != 1 {
        assert!(tokio::time::Instant::now() < deadline, "the dataset list did not load");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.eval(&select).await;
    browser.eval("document.querySelector('[name=p0_lr]').value = '-1'; document.querySelector('#job-form button[type=submit]').click()").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let shown = loop {
        let shown = browser.eval("(() => { const e = document.querySelector('.field-error'); return e && {field: e.dataset.errorField, beside: e.previousElementSibling.name}; })()").await;
        if !shown.is_null() || tokio::time::Instant::now() > deadline {
            break shown;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(shown, json!({"field": "phases[0].optimizer.learning_rate", "beside": "p0_lr"}));
    drop(browser);
    server.stop().await;
}

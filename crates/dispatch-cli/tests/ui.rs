//! The dashboard over plain HTTP, against the real binary: sign-in and its
//! cookie, CSRF refusals, the read-only view of a token without the admin
//! scope, the audit log of dashboard actions, and pages that stay small.
//! `ui_browser.rs` drives the same pages in a real browser.

mod common;

use common::{Server, create_token};
use serde_json::json;

/// A client that does not follow redirects, so that each answer is seen.
fn client() -> reqwest::Client {
    common::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

struct Answer {
    status: u16,
    location: String,
    set_cookie: Vec<String>,
    text: String,
}

async fn send(
    method: &str,
    url: &str,
    cookie: Option<&str>,
    form: Option<&[(&str, &str)]>,
    extra: &[(&str, &str)],
) -> Answer {
    let mut req = client().request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    if let Some(f) = form {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(f.iter())
            .finish();
        req = req
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    assert!(status < 500, "{method} {url} answered {status}");
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let set_cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    let text = resp.text().await.unwrap();
    Answer {
        status,
        location,
        set_cookie,
        text,
    }
}

/// Signs in with `token`: the session cookie (`name=value`).
async fn sign_in(base: &str, token: &str) -> String {
    let a = send(
        "POST",
        &format!("{base}/ui/login"),
        None,
        Some(&[("token", token)]),
        &[],
    )
    .await;
    assert_eq!(a.status, 303, "{}", a.text);
    assert_eq!(a.location, "/ui");
    let cookie = a
        .set_cookie
        .iter()
        .find(|c| c.starts_with("dispatch_session="))
        .expect("a session cookie")
        .clone();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "no TLS here: {cookie}");
    cookie.split(';').next().unwrap().to_owned()
}

/// The CSRF token in a page's forms.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=csrf value=\"")
        .unwrap_or_else(|| panic!("no CSRF field in {page}"));
    let rest = &page[at + "name=csrf value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

async fn paused(server: &Server, token: &str, queue: &str) -> bool {
    let queues: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/v1/queues", server.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == queue)
        .map(|q| q["paused"].as_bool().unwrap())
        .unwrap_or(false)
}

#[tokio::test]
async fn sign_in_csrf_read_only_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let audit = dir.path().join("audit.log");
    let admin = create_token(&tokens, "admin", "ops");
    let reader = create_token(&tokens, "submit", "viewer");
    let server = Server::with_args(&[
        "--tokens",
        tokens.to_str().unwrap(),
        "--audit-log",
        audit.to_str().unwrap(),
    ])
    .await;
    let base = server.url.clone();
    let api = reqwest::Client::new();
    let r = api
        .post(format!("{base}/v1/tasks"))
        .bearer_auth(&admin)
        .json(&json!({"type": "ui.t", "queue": "mail"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // No session: every page sends to the sign-in form; the live refresh
    // gets a 401 it does not follow.
    for page in ["/ui", "/ui/tasks", "/ui/queues", "/ui/cluster"] {
        let a = send("GET", &format!("{base}{page}"), None, None, &[]).await;
        assert_eq!(
            (a.status, a.location.as_str()),
            (303, "/ui/login"),
            "{page}"
        );
    }
    let a = send(
        "GET",
        &format!("{base}/ui"),
        None,
        None,
        &[("x-dispatch-live", "1")],
    )
    .await;
    assert_eq!(a.status, 401);
    let a = send("GET", &format!("{base}/ui/login"), None, None, &[]).await;
    assert_eq!(a.status, 200);
    assert!(a.text.contains("type=password"), "{}", a.text);

    // A wrong token does not sign in.
    let a = send(
        "POST",
        &format!("{base}/ui/login"),
        None,
        Some(&[("token", "dsp_0000")]),
        &[],
    )
    .await;
    assert_eq!(a.status, 401);
    assert!(a.set_cookie.is_empty());
    assert!(a.text.contains("not valid"), "{}", a.text);
    // A made-up session id is no session.
    let a = send(
        "GET",
        &format!("{base}/ui"),
        Some("dispatch_session=00ff"),
        None,
        &[],
    )
    .await;
    assert_eq!(a.status, 303);

    // The admin sees the pause button; a forged POST is refused.
    let ops = sign_in(&base, &admin).await;
    let page = send("GET", &format!("{base}/ui/queues"), Some(&ops), None, &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("/ui/queues/mail/pause"), "{}", page.text);
    assert!(page.text.contains(">ops<"), "the viewer is named");
    let csrf = csrf_of(&page.text);
    let pause = format!("{base}/ui/queues/mail/pause");
    for (form, origin) in [
        (vec![], None),
        (vec![("csrf", "0123")], None),
        (vec![("csrf", csrf.as_str())], Some("http://evil.example")),
    ] {
        let extra: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
        let a = send("POST", &pause, Some(&ops), Some(&form), &extra).await;
        assert_eq!(a.status, 403, "{form:?} {origin:?}: {}", a.text);
        assert!(!paused(&server, &admin, "mail").await);
    }
    // The same form without a session is sent to sign in.
    let a = send("POST", &pause, None, Some(&[("csrf", &csrf)]), &[]).await;
    assert_eq!((a.status, a.location.as_str()), (303, "/ui/login"));
    assert!(!paused(&server, &admin, "mail").await);
    // The real form pauses, through the API.
    let origin = base.clone();
    let a = send(
        "POST",
        &pause,
        Some(&ops),
        Some(&[("csrf", &csrf)]),
        &[("origin", &origin)],
    )
    .await;
    assert_eq!(a.status, 303, "{}", a.text);
    assert!(paused(&server, &admin, "mail").await);
    // The message of the action is shown once.
    let flash = a
        .set_cookie
        .iter()
        .find(|c| c.starts_with("dispatch_flash="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = send(
        "GET",
        &format!("{base}/ui/queues"),
        Some(&format!("{ops}; {flash}")),
        None,
        &[],
    )
    .await;
    assert!(page.text.contains("Queue mail paused."), "{}", page.text);

    // A token without the admin scope sees everything, with no button, and
    // its POSTs are refused even with its own CSRF token.
    let viewer = sign_in(&base, &reader).await;
    let page = send(
        "GET",
        &format!("{base}/ui/queues"),
        Some(&viewer),
        None,
        &[],
    )
    .await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("data-queue=\"mail\""), "{}", page.text);
    assert!(page.text.contains("read-only"));
    assert!(
        !page.text.contains("/ui/queues/mail/resume"),
        "{}",
        page.text
    );
    let viewer_csrf = csrf_of(&page.text); // the sign-out form's
    assert_ne!(viewer_csrf, csrf);
    let a = send(
        "POST",
        &format!("{base}/ui/queues/mail/resume"),
        Some(&viewer),
        Some(&[("csrf", &viewer_csrf)]),
        &[],
    )
    .await;
    assert_eq!(a.status, 403);
    assert!(a.text.contains("admin scope"), "{}", a.text);
    assert!(paused(&server, &admin, "mail").await);
    // One session's CSRF token does not work in another.
    let a = send(
        "POST",
        &format!("{base}/ui/queues/mail/resume"),
        Some(&ops),
        Some(&[("csrf", &viewer_csrf)]),
        &[],
    )
    .await;
    assert_eq!(a.status, 403);

    // Sign-out ends the session.
    let a = send(
        "POST",
        &format!("{base}/ui/logout"),
        Some(&ops),
        Some(&[("csrf", &csrf)]),
        &[],
    )
    .await;
    assert_eq!((a.status, a.location.as_str()), (303, "/ui/login"));
    let a = send("GET", &format!("{base}/ui"), Some(&ops), None, &[]).await;
    assert_eq!(a.status, 303);

    // The audit log has the dashboard's action under the token's name,
    // like an API request, and the sign-ins.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&audit).unwrap_or_default();
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let pause = lines
            .iter()
            .find(|l| l["action"] == "queue.pause" && l["outcome"] == 200);
        let login = lines
            .iter()
            .find(|l| l["action"] == "ui.login" && l["token"] == "viewer");
        if let (Some(pause), Some(_)) = (pause, login) {
            assert_eq!(pause["token"], "ops");
            assert_eq!(pause["target"], "mail");
            assert!(
                !lines
                    .iter()
                    .any(|l| l["action"] == "queue.resume" && l["outcome"] == 200),
                "{log}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the audit log lacks the dashboard's lines: {log}"
        );
        tokio::time::sleep(common::POLL_EVERY).await;
    }
}

#[tokio::test]
async fn without_tokens_there_is_no_sign_in_and_pages_are_small() {
    let server = Server::start().await;
    let base = server.url.clone();
    let api = server.api();
    let t = api.submit(json!({"type": "ui.small", "queue": "q1"})).await;
    let id = common::id_of(&t);
    let a = send("GET", &format!("{base}/ui/login"), None, None, &[]).await;
    assert_eq!((a.status, a.location.as_str()), (303, "/ui"));
    let css = send("GET", &format!("{base}/ui/assets/ui.css"), None, None, &[]).await;
    let js = send("GET", &format!("{base}/ui/assets/ui.js"), None, None, &[]).await;
    assert_eq!((css.status, js.status), (200, 200));
    for page in [
        "/ui".to_owned(),
        "/ui/tasks".to_owned(),
        format!("/ui/tasks/{id}"),
        "/ui/workers".to_owned(),
        "/ui/queues".to_owned(),
        "/ui/schedules".to_owned(),
        "/ui/cluster".to_owned(),
    ] {
        let a = send("GET", &format!("{base}{page}"), None, None, &[]).await;
        assert_eq!(a.status, 200, "{page}: {}", a.text);
        assert!(
            !a.text.contains("class=error>") && !a.text.contains("class=error "),
            "{page}: {}",
            a.text
        );
        assert!(
            !a.text.contains("http://") && !a.text.contains("https://"),
            "{page} links out"
        );
        let weight = a.text.len() + css.text.len() + js.text.len();
        assert!(weight < 200 * 1024, "{page} weighs {weight} bytes");
        let live = send(
            "GET",
            &format!("{base}{page}"),
            None,
            None,
            &[("x-dispatch-live", "1")],
        )
        .await;
        assert_eq!(live.status, 200);
        assert!(!live.text.contains("<html"), "{page}: the live part alone");
    }
    // Without tokens anyone acts, but still only with the forms' token.
    let page = send("GET", &format!("{base}/ui/tasks/{id}"), None, None, &[]).await;
    let csrf = csrf_of(&page.text);
    let cancel = format!("{base}/ui/tasks/{id}/cancel");
    let a = send("POST", &cancel, None, Some(&[("csrf", "forged")]), &[]).await;
    assert_eq!(a.status, 403);
    assert_eq!(api.task(&id).await["state"], "queued");
    let a = send("POST", &cancel, None, Some(&[("csrf", &csrf)]), &[]).await;
    assert_eq!(
        (a.status, a.location.as_str()),
        (303, &*format!("/ui/tasks/{id}"))
    );
    assert_eq!(api.task(&id).await["state"], "cancelled");
    // Filters that are not valid are named, not a server error.
    let a = send(
        "GET",
        &format!("{base}/ui/tasks?state=lost&from=never"),
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(a.text.contains("state:"), "{}", a.text);
    let a = send("GET", &format!("{base}/ui/tasks/nope"), None, None, &[]).await;
    assert_eq!(a.status, 404);
}

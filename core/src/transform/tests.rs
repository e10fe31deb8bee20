use serde_json::{json, Value};

use super::*;

fn payload() -> Value {
    json!({"id": "e1", "trigger": {"name": "t"}, "table": {"schema": "public", "name": "users"},
           "event": {"op": "INSERT", "data": {"old": null, "new": {"id": 7, "name": "Ann Lee", "email": "a@x.io"}},
                     "session_variables": {"x-hasura-role": "admin", "x-hasura-user-id": "42"}}})
}

fn apply(t: Value, base_url: &str) -> (Result<Transformed, String>, Vec<(String, String)>) {
    let t = parse_request(&t).unwrap_or_else(|e| panic!("{}", e.message));
    let p = payload();
    let mut headers = vec![("X-Keep".to_string(), "k".to_string()), ("X-Drop".to_string(), "d".to_string())];
    let r = t.apply(&Input { payload: &p, base_url }, &mut headers);
    (r, headers)
}

#[test]
fn no_transform_keys_keeps_the_request() {
    let (r, headers) = apply(json!({}), "http://h/x?a=1");
    let r = r.unwrap();
    assert_eq!(r.method, "POST");
    assert_eq!(r.url, "http://h/x?a=1");
    assert_eq!(r.body, Some(Body::Json(payload().to_string())));
    assert_eq!(headers.len(), 2);
}

#[test]
fn a_get_with_the_body_removed() {
    let (r, _) = apply(json!({"version": 2, "method": "get", "body": {"action": "remove"}}), "http://h/x");
    let r = r.unwrap();
    assert_eq!(r.method, "GET");
    assert_eq!(r.body, None);
}

#[test]
fn url_query_params_and_headers_from_templates() {
    let (r, headers) = apply(
        json!({"version": 2,
               "url": "http://api.example/users/{{$body.event.data.new.id}}",
               "query_params": {"role": "{{$session_variables['x-hasura-role']}}", "q": "a b&c", "flag": null,
                                "gone": "{{$body.event.data.old}}"},
               "request_headers": {"add_headers": {"X-User": "{{getSessionVariable(\"X-Hasura-User-Id\")}}", "x-keep": "new"},
                                   "remove_headers": ["x-drop"]},
               "body": {"action": "transform", "template": "{\"user\": {\"id\": {{$body.event.data.new.id}}, \"qp\": {{$query_params}}}}"}}),
        "http://h/base?page=2",
    );
    let r = r.unwrap();
    // The query string is replaced; a value rendering as null drops its key.
    assert_eq!(r.url, "http://api.example/users/7?role=admin&q=a%20b%26c&flag");
    assert_eq!(headers, vec![("X-User".to_string(), "42".to_string()), ("x-keep".to_string(), "new".to_string())]);
    assert_eq!(r.body, Some(Body::Json(json!({"user": {"id": 7, "qp": [["page", "2"]]}}).to_string())));
}

#[test]
fn query_params_as_one_template() {
    let (r, _) =
        apply(json!({"query_params": "?id={{$body.event.data.new.id}}&op={{$body.event.op}}"}), "http://h/x?old=1");
    assert_eq!(r.unwrap().url, "http://h/x?id=7&op=INSERT");
}

#[test]
fn a_form_encoded_post() {
    let (r, _) = apply(
        json!({"version": 2, "body": {"action": "x_www_form_urlencoded",
               "form_template": {"name": "{{$body.event.data.new.name}}", "id": "{{$body.event.data.new.id}}", "to": "ops@x.io"}}}),
        "http://h/x",
    );
    let body = r.unwrap().body.unwrap();
    assert_eq!(body.content_type(), "application/x-www-form-urlencoded");
    assert_eq!(body.text(), "name=Ann%20Lee&id=7&to=ops%40x.io");
}

#[test]
fn version_1_body_is_a_json_template_or_a_form_with_content_type() {
    let (r, _) = apply(json!({"body": "{\"text\": \"hi {{$body.event.data.new.name}}\"}"}), "http://h/x");
    assert_eq!(r.unwrap().body, Some(Body::Json(r#"{"text":"hi Ann Lee"}"#.into())));
    let (r, _) = apply(
        json!({"content_type": "application/x-www-form-urlencoded", "body": "{\"a\": {{$body.event.data.new.id}}, \"b\": \"x y\"}"}),
        "http://h/x",
    );
    assert_eq!(r.unwrap().body, Some(Body::Form("a=7&b=x%20y".into())));
}

#[test]
fn run_time_failures_name_the_part_and_the_reason() {
    let (r, _) = apply(json!({"body": "{{ $body.event.data.new.nope }}"}), "http://h/x");
    let e = r.unwrap_err();
    assert!(e.starts_with("request_transform.body: 'Object' has no attribute 'nope'"), "{e}");
    let (r, _) = apply(json!({"url": "{{$body.event.data}}"}), "http://h/x");
    assert!(r.unwrap_err().contains("not a URL"));
    let (r, _) = apply(json!({"request_headers": {"add_headers": {"X": "{{$body.event.data.old.x}}"}}}), "http://h/x");
    assert!(r.unwrap_err().starts_with("request_transform.request_headers.add_headers.X: "));
    let (r, _) = apply(
        json!({"version": 2, "body": {"action": "x_www_form_urlencoded", "form_template": {"d": "{{$body.event.data}}"}}}),
        "http://h/x",
    );
    // A string template interpolates non-strings as JSON: fine.
    assert!(r.is_ok());
}

#[test]
fn bad_transforms_are_refused_with_the_key_and_position() {
    let err = |v: Value| parse_request(&v).unwrap_err().message;
    let e = err(json!({"body": "{\"a\": {{ $body.x }"}));
    assert!(e.starts_with("invalid value for key \"request_transform.body\": Kriti syntax error: "), "{e}");
    assert!(e.contains("line 1, column"), "{e}");
    assert!(err(json!({"url": "{{ if }}"})).contains("request_transform.url"));
    assert!(err(json!({"version": 3})).contains("expected 1 or 2"));
    assert!(err(json!({"template_engine": "Go"})).contains("expected \"Kriti\""));
    assert!(err(json!({"method": "GE T"})).contains("HTTP method"));
    assert!(err(json!({"version": 2, "body": "{}"})).contains("expected an object with \"action\""));
    assert!(err(json!({"version": 2, "body": {"action": "zip"}})).contains("request_transform.body.action"));
    assert!(err(json!({"version": 2, "body": {"action": "transform"}})).contains("body.template\" is required"));
    assert!(err(json!({"request_headers": {"add_headers": {"Bad Name": "x"}}})).contains("not a valid header name"));
    assert!(err(json!({"request_headers": {"remove_headers": "X"}})).contains("list of header names"));
    assert!(err(json!({"query_params": 3})).contains("query_params"));
    assert!(err(json!({"nope": 1})).contains("unknown key \"request_transform.nope\""));
    assert!(parse_response(&json!({"body": "{{"})).unwrap_err().message.contains("response_transform.body"));
}

#[test]
fn stored_form_fills_version_and_engine() {
    let t = parse_request(&json!({"method": "PUT"})).unwrap();
    assert_eq!(t.to_json(), json!({"method": "PUT", "version": 1, "template_engine": "Kriti"}));
    assert_eq!(t, parse_request(&t.to_json()).unwrap());
}

#[test]
fn response_transforms_see_the_answer_and_the_request() {
    let t = parse_response(&json!({"version": 2, "body": {"action": "transform",
        "template": "{\"ok\": {{$body.status}}, \"for\": {{$request.body.event.data.new.id}}, \"role\": {{getSessionVariable(\"x-hasura-role\")}}}"}}))
    .unwrap();
    let p = payload();
    let input = Input { payload: &p, base_url: "http://h/x" };
    assert_eq!(t.apply(r#"{"status": "done"}"#, &input).unwrap(), r#"{"ok":"done","for":7,"role":"admin"}"#);
    // Not JSON: $body is null.
    let e = t.apply("plain text", &input).unwrap_err();
    assert!(e.starts_with("response_transform.body: "), "{e}");
    let removed = parse_response(&json!({"version": 2, "body": {"action": "remove"}})).unwrap();
    assert_eq!(removed.apply("{}", &input).unwrap(), "null");
    let v1 = parse_response(&json!({"body": "{{$body.n}}"})).unwrap();
    assert_eq!(v1.apply(r#"{"n": [1]}"#, &input).unwrap(), "[1]");
}

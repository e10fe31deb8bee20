//! The examples of kriti-lang's README and test suite (their templates and
//! expected values, over a source document of our own with the same
//! shape), the function table of its README, and the templates of Hasura's
//! transform documentation.

use serde_json::{json, Value};

use super::*;

/// A list of people, as kriti-lang's examples range over.
fn people() -> Value {
    json!([
        {"guid": "g-0", "isActive": false, "eyeColor": "blue", "age": 26, "name": "Ada",
         "tags": ["a", "b"], "friends": [{"id": 0, "name": "Bo"}, {"id": 1, "name": "Cy"}]},
        {"guid": "g-1", "isActive": true, "eyeColor": "brown", "age": 31, "name": "Dee",
         "tags": [], "friends": [{"id": 0, "name": "Eve"}, {"id": 1, "name": "Fay"}]},
        {"guid": "g-2", "isActive": true, "eyeColor": "green", "age": 40, "name": "Gus",
         "tags": ["c"], "friends": []}
    ])
}

fn run_with(template: &str, name: &str, source: &Value) -> Result<Value, Error> {
    let values = [(name, source)];
    Template::parse(template)?.eval(Bindings { values: &values, session_variables: None })
}

fn run(template: &str) -> Value {
    run_with(template, "$", &people()).unwrap_or_else(|e| panic!("{template}: {e}"))
}

fn eval_error(template: &str) -> Error {
    match run_with(template, "$", &people()) {
        Err(e) => e,
        Ok(v) => panic!("{template} evaluated to {v}"),
    }
}

fn syntax_error(template: &str) -> Error {
    match Template::parse(template) {
        Err(e) => e,
        Ok(_) => panic!("{template} parsed"),
    }
}

#[test]
fn paths_look_up_fields_indices_and_quoted_keys() {
    assert_eq!(run(r#"{"guid": {{ $[0].guid }}}"#), json!({"guid": "g-0"}));
    assert_eq!(run("{{ $[1].friends[1].name }}"), json!("Fay"));
    assert_eq!(run("{{ $[1]['eyeColor'] }}"), json!("brown"));
    let odd = json!({"my key": {"x": [10, 20]}});
    assert_eq!(run_with("{{ $body['my key'].x[1] }}", "$body", &odd).unwrap(), json!(20));
    // An index may be any expression that gives a number or a string.
    assert_eq!(run("{{ $[$[1].friends[1].id].name }}"), json!("Dee"));
}

#[test]
fn a_missing_path_is_an_error_with_its_position() {
    let e = eval_error("{{ $[0].nope }}");
    assert_eq!(e.message, "'Object' has no attribute 'nope'");
    assert_eq!((e.line, e.column), (1, 4));
    assert_eq!(eval_error("{{ $[99] }}").message, "Index out of range");
    assert_eq!(eval_error("{{ $.x }}").message, "Couldn't match expected type 'Object' with actual type 'Array'");
    assert_eq!(eval_error("{{ $missing }}").message, "Variable '$missing' not in scope");
}

#[test]
fn optional_lookups_give_null_and_stop_at_the_first_missing_step() {
    // kriti-lang's example 20.
    assert_eq!(
        run("[ {{ $[0]?.notIndex }}, {{ $[0]?['notIndex'] }}, {{ $?[9999] }}, {{ $?[9999].index }}, {{ $[0]?.notIndex.baz }} ]"),
        json!([null, null, null, null, null])
    );
    assert_eq!(run("{{ $[0]?.friends[1].name }}"), json!("Cy"));
    // `x?` on an unbound variable is null.
    assert_eq!(run("{{ $nothing? }}"), Value::Null);
    assert_eq!(run("{{ $nothing?.a.b }}"), Value::Null);
    // A scalar cannot be looked into, even optionally.
    assert!(eval_error("{{ $[0].age?.x }}").message.contains("actual type 'Number'"));
}

#[test]
fn defaulting_replaces_null_only() {
    assert_eq!(run("{{ $[0]?.nope ?? true }}"), json!(true));
    assert_eq!(run("{{ null ?? 1 }}"), json!(1));
    assert_eq!(run("{{ $[0].isActive ?? true }}"), json!(false));
    assert_eq!(run(r#"{{ $[0]?.a ?? $[0]?.b ?? "last" }}"#), json!("last"));
}

#[test]
fn range_binds_index_and_item_and_gives_an_array() {
    // kriti-lang's examples 2, 5 and 8: a range inside [ ] is one element.
    assert_eq!(run("[ {{ range _, x := $ }} {{ x.eyeColor }} {{ end }} ]"), json!([["blue", "brown", "green"]]));
    assert_eq!(run("{{ range i, x := $ }} {{ i }} {{ end }}"), json!([0, 1, 2]));
    assert_eq!(
        run("{{ range _, x := $ }} {{ range i, f := x.friends }} {{ f.name }} {{ end }} {{ end }}"),
        json!([["Bo", "Cy"], ["Eve", "Fay"], []])
    );
    assert_eq!(run("{{ range _, $var := $ }} {{ $var.age }} {{ end }}"), json!([26, 31, 40]));
    // The README's article example.
    let source = json!({"event": {"name": "Freddie", "author": {"articles": [
        {"id": 0, "title": "The Elements", "published": true},
        {"id": 2, "title": "Mars", "published": false}]}}});
    let template = r#"{"author": {"name": {{$.event.name}}, "articles": [
        {{ range _, x := $.event.author.articles }}
          {{ if x.published }} {"id": {{x.id}}, "title": {{x.title}}} {{ else }} null {{ end }}
        {{ end }} ]}}"#;
    assert_eq!(
        run_with(template, "$", &source).unwrap(),
        json!({"author": {"name": "Freddie", "articles": [[{"id": 0, "title": "The Elements"}, null]]}})
    );
    assert!(eval_error("{{ range _, x := $[0] }} x {{ end }}").message.contains("expected type 'Array'"));
}

#[test]
fn range_results_can_be_concatenated() {
    // kriti-lang's example 25.
    assert_eq!(
        run(r#"{"arrays": {{ concat( {{ range i, x := $ }} [ {{ i }}, {{ i }} ] {{ end }}) }} }"#),
        json!({"arrays": [0, 0, 1, 1, 2, 2]})
    );
}

#[test]
fn if_elif_else_choose_by_a_boolean() {
    // kriti-lang's example 12.
    assert_eq!(
        run("[ {{ if 1 < 2 }} true {{ else }} false {{ end }}, {{ if 1 > 2 }} true {{ else }} false {{ end }}, \
             {{ if 1 == 2 }} true {{ else }} false {{ end }}, {{ if true && false }} true {{ else }} false {{ end }}, \
             {{ if true || false }} true {{ else }} false {{ end }} ]"),
        json!([true, false, false, false, true])
    );
    // Example 34: elif with not.
    let t = r#"{{ if $[0].isActive }} "if" {{ elif (not $[1].isActive) }} "elif" {{ elif (not $[0].isActive) }} "another" {{ else }} "none" {{ end }}"#;
    assert_eq!(run(t), json!("another"));
    assert_eq!(
        run(
            r#"[ {{ range _, x := $ }} {{ if x.isActive }} {{ x.eyeColor }} {{ else }} "not active" {{ end }} {{ end }} ]"#
        ),
        json!([["not active", "brown", "green"]])
    );
    assert_eq!(
        eval_error("{{ if $[0].age }} 1 {{ else }} 2 {{ end }}").message,
        "Couldn't match expected type 'Boolean' with actual type 'Number'"
    );
}

#[test]
fn operators_compare_values_as_aeson_does() {
    assert_eq!(run(r#"{{ "a" < "b" }}"#), json!(true));
    assert_eq!(run("{{ 2 >= 2 }}"), json!(true));
    assert_eq!(run("{{ 1 == 1.0 }}"), json!(true));
    assert_eq!(run("{{ 1 != 2 }}"), json!(true));
    assert_eq!(run(r#"{{ {"a": [1, 2]} == {"a": [1, 2]} }}"#), json!(true));
    // Across kinds: object < array < string < number < boolean < null.
    assert_eq!(run(r#"{{ [1] < "x" }}"#), json!(true));
    assert_eq!(run("{{ 5 < true }}"), json!(true));
    assert_eq!(run(r#"{{ "brown" in ["blue", "brown"] }}"#), json!(true));
    assert_eq!(run(r#"{{ "age" in $[0] }}"#), json!(true));
    assert_eq!(run(r#"{{ "x" in $[0] }}"#), json!(false));
    assert_eq!(run("{{ $[0].isActive || $[1].isActive && $[2].isActive }}"), json!(true));
    assert_eq!(run("{{ not $[0].isActive }}"), json!(true));
    // `not` negates everything after it, as in kriti-lang.
    assert_eq!(run("{{ not true && false }}"), json!(true));
    assert!(eval_error("{{ 1 && true }}").message.contains("expected type 'Boolean'"));
    // Both sides are evaluated: no short circuit hides a bad path.
    assert_eq!(eval_error("{{ false && $[0].nope }}").message, "'Object' has no attribute 'nope'");
}

#[test]
fn strings_interpolate_strings_raw_and_other_values_as_json() {
    assert_eq!(run(r#""http://www.{{ $[0].eyeColor }}.com/{{ $[0].age }}""#), json!("http://www.blue.com/26"));
    assert_eq!(run(r#""{{ $[1].friends[1] }}""#), json!(r#"{"id":1,"name":"Fay"}"#));
    assert_eq!(run(r#""x{{ $?[1000] }}y""#), json!("xnully"));
    assert_eq!(run(r#""a \"quoted\" \{ brace {single} \u00e9\n""#), json!("a \"quoted\" { brace {single} é\n"));
    assert_eq!(run(r#""""#), json!(""));
}

#[test]
fn json_literals_and_comments() {
    assert_eq!(
        run("# a comment\n{\"n\": -1.5e2, \"i\": 7, \"b\": false, \"z\": null, \"l\": [], \"o\": {}}"),
        json!({"n": -150.0, "i": 7, "b": false, "z": null, "l": [], "o": {}})
    );
}

/// The function table of kriti-lang's README, example by example.
#[test]
fn the_readme_function_table() {
    let cases = [
        (
            r#"{"object": {{ empty({"a": 1}) }}, "string": {{ empty("") }}, "array": {{ empty([1]) }} }"#,
            json!({"array": false, "object": false, "string": true}),
        ),
        (
            r#"{"object": {{ size({"a": 1}) }}, "string": {{ size("asdf") }}, "array": {{ size([1]) }} }"#,
            json!({"array": 1, "object": 1, "string": 4}),
        ),
        (
            r#"{"string": {{ inverse("asdf") }}, "array": {{ inverse([1,2,3]) }}, "number": {{ inverse(4) }} }"#,
            json!({"array": [3, 2, 1], "number": 0.25, "string": "fdsa"}),
        ),
        (r#"{"string": {{ head("asdf") }}, "array": {{ head([1,2,3]) }} }"#, json!({"array": 1, "string": "a"})),
        (r#"{"string": {{ tail("asdf") }}, "array": {{ tail([1,2,3]) }} }"#, json!({"array": [2, 3], "string": "sdf"})),
        (r#"{"string": {{toCaseFold("AbCd")}} }"#, json!({"string": "abcd"})),
        (r#"{"string": {{toLower("AbCd")}} }"#, json!({"string": "abcd"})),
        (r#"{"string": {{toUpper("AbCd")}} }"#, json!({"string": "ABCD"})),
        (r#"{"string": {{toTitle("AbCd")}} }"#, json!({"string": "Abcd"})),
        (r#"{"array": {{ fromPairs([["a",1],["b",2]]) }} }"#, json!({"array": {"a": 1, "b": 2}})),
        (r#"{"object": {{ toPairs({"a": 1, "b": 2}) }} }"#, json!({"object": [["a", 1], ["b", 2]]})),
        (r#"{"array": {{ removeNulls([1,null,3,null,5]) }} }"#, json!({"array": [1, 3, 5]})),
        (
            r#"{"arrays": {{ concat([[1,2],[3,4]]) }}, "strings": {{ concat(["abc", "def", "g"]) }}, "objects": {{ concat([{"a":1, "b":2},{"b":3, "c":4} ] ) }} }"#,
            json!({"arrays": [1, 2, 3, 4], "objects": {"a": 1, "b": 3, "c": 4}, "strings": "abcdefg"}),
        ),
    ];
    for (template, want) in cases {
        assert_eq!(run(template), want, "{template}");
    }
}

#[test]
fn functions_on_the_other_kinds_of_value() {
    assert_eq!(run("{{ empty(null) }}"), json!(true));
    assert_eq!(run(r#"{{ empty("  ") }}"#), json!(true));
    assert_eq!(run("{{ empty(0) }}"), json!(true));
    assert_eq!(eval_error("{{ empty(true) }}").message, "Cannot define emptiness for a boolean");
    assert_eq!(run("{{ size(true) }}"), json!(1));
    assert_eq!(run("{{ size(null) }}"), json!(0));
    assert_eq!(run("{{ size(7) }}"), json!(7));
    assert_eq!(run(r#"{{ size("héllo") }}"#), json!(5));
    assert_eq!(run("{{ inverse(true) }}"), json!(false));
    assert_eq!(run(r#"{{ inverse({"a": 1}) }}"#), json!({"a": 1}));
    assert_eq!(run("{{ inverse(null) }}"), Value::Null);
    assert_eq!(eval_error("{{ head([]) }}").message, "Empty array");
    assert_eq!(eval_error("{{ head(1) }}").message, "Expected an array or string");
    assert_eq!(eval_error(r#"{{ tail("") }}"#).message, "Empty string");
    assert_eq!(run(r#"{{ toCaseFold("Straße") }}"#), json!("strasse"));
    assert_eq!(run(r#"{{ toTitle("hello wORLD, it's me") }}"#), json!("Hello World, It's Me"));
    assert!(eval_error("{{ toUpper(1) }}").message.contains("expects a String"));
    assert_eq!(run(r#"{{ escapeUri("a b&c=d/é~-_.") }}"#), json!("a%20b%26c%3Dd%2F%C3%A9~-_."));
    assert!(eval_error(r#"{{ fromPairs([["a"]]) }}"#).message.starts_with("Expected an array of shape"));
    assert!(eval_error("{{ fromPairs([[1, 2]]) }}").message.starts_with("Expected an array of shape"));
    assert_eq!(run("{{ concat([]) }}"), json!([]));
    assert!(eval_error(r#"{{ concat([[1], "a"]) }}"#).message.starts_with("concat expects"));
    assert_eq!(run("{{ removeNulls([]) }}"), json!([]));
    // A function's error points at its argument.
    let e = eval_error("[1,\n {{ head([]) }}]");
    assert_eq!((e.line, e.column), (2, 10));
}

#[test]
fn get_session_variable_is_case_insensitive() {
    let sv = json!({"x-hasura-role": "user", "X-Hasura-User-Id": "42"});
    let t = Template::parse(
        r#"{"r": {{ getSessionVariable("X-Hasura-Role") }}, "u": {{ getSessionVariable("x-hasura-user-id") }} }"#,
    )
    .unwrap();
    let b = Bindings { values: &[], session_variables: Some(&sv) };
    assert_eq!(t.eval(b).unwrap(), json!({"r": "user", "u": "42"}));
    let missing = Template::parse(r#"{{ getSessionVariable("x-hasura-org") }}"#).unwrap();
    assert_eq!(missing.eval(b).unwrap_err().message, "Session variable \"x-hasura-org\" not found");
    assert!(missing.eval(Bindings::default()).is_err());
}

/// Templates from Hasura's transform documentation, over an event payload.
#[test]
fn hasura_documented_templates() {
    let body = json!({"event": {"op": "INSERT", "data": {"old": null, "new": {"id": 7, "name": "Ann", "email": "a@x.io"}},
        "session_variables": {"x-hasura-role": "admin"}}, "table": {"schema": "public", "name": "users"},
        "trigger": {"name": "user_created"}});
    let base = json!("https://api.example.com/hook");
    let qp = json!([["page", "1"]]);
    let sv = json!({"x-hasura-role": "admin", "x-hasura-user-id": "9"});
    let values = [("$body", &body), ("$base_url", &base), ("$query_params", &qp), ("$session_variables", &sv)];
    let b = Bindings { values: &values, session_variables: Some(&sv) };
    let cases = [
        (
            r#"{"text": "New user {{$body.event.data.new.name}} ({{$body.event.data.new.email}})"}"#,
            json!({"text": "New user Ann (a@x.io)"}),
        ),
        (r#""{{$base_url}}/users/{{$body.event.data.new.id}}""#, json!("https://api.example.com/hook/users/7")),
        (
            r#"{"username": {{$body.event.data.new.name}}, "role": {{$session_variables['x-hasura-role']}}}"#,
            json!({"username": "Ann", "role": "admin"}),
        ),
        (r#"{{ $body.event.data.old?.name ?? "nobody" }}"#, json!("nobody")),
        (
            r#"{{ if $body.event.op == "INSERT" }} "created" {{ elif $body.event.op == "UPDATE" }} "changed" {{ else }} "gone" {{ end }}"#,
            json!("created"),
        ),
        (
            r#"{"page": {{ head(head($query_params)) }}, "user": {{ getSessionVariable("x-hasura-user-id") }} }"#,
            json!({"page": "page", "user": "9"}),
        ),
        (r#"{{ $body.table.schema + 1 }}"#, Value::Null),
    ];
    for (template, want) in cases.iter().take(cases.len() - 1) {
        let t = Template::parse(template).unwrap_or_else(|e| panic!("{template}: {e}"));
        assert_eq!(t.eval(b).unwrap(), *want, "{template}");
    }
    // Kriti has no arithmetic.
    assert!(Template::parse(cases[cases.len() - 1].0).is_err());
}

#[test]
fn string_templates_wrap_unescaped_text() {
    let body = json!({"id": 7, "tags": ["a"]});
    let values = [("$body", &body)];
    let b = Bindings { values: &values, session_variables: None };
    let t = Template::parse_string("https://x.io/items/{{$body.id}}?t={{$body.tags}}").unwrap();
    assert_eq!(t.eval(b).unwrap(), json!("https://x.io/items/7?t=[\"a\"]"));
    let e = Template::parse_string("Bearer {{ $body.id ").unwrap_err();
    assert_eq!(e.line, 1);
    assert!(e.message.contains("not closed"), "{e}");
    let e = Template::parse_string("x {{ $body.id ?? }}").unwrap_err();
    assert_eq!((e.line, e.column), (1, 18), "{e}");
}

#[test]
fn syntax_errors_name_what_was_expected_and_where() {
    let e = syntax_error("{{ if true }} 1 {{ end }}");
    assert!(e.message.contains("needs an '{{ else }}'"), "{e}");
    assert_eq!((e.line, e.column), (1, 20));
    let e = syntax_error("{\n  \"a\": {{ $body.x }\n}");
    assert_eq!(e.line, 3, "{e}");
    let e = syntax_error(r#"{"a": {{ nosuch($body) }} }"#);
    assert!(e.message.starts_with("unknown function 'nosuch'"), "{e}");
    assert_eq!((e.line, e.column), (1, 10));
    assert!(syntax_error(r#"{"a" 1}"#).message.contains("':' after an object key"));
    assert!(syntax_error(r#"{"a": 1"#).message.contains("in an object"));
    assert!(syntax_error(r#""open"#).message.contains("not closed"));
    assert!(syntax_error("[1, 2").message.contains("in an array"));
    assert!(syntax_error("{{ range x := $ }} x {{ end }}").message.contains("','"));
    assert!(syntax_error("{{ range _, x := $ }} x").message.contains("'{{ end }}'"));
    assert!(syntax_error("1 2").message.contains("after the end of the template"));
    assert!(syntax_error(r#"{"{{x}}": 1}"#).message.contains("object keys"));
    assert!(syntax_error("{{ $x. }}").message.contains("field name"));
    assert!(syntax_error("@").message.contains("unexpected character '@'"));
    assert!(syntax_error("").message.contains("expected a value"));
}

#[test]
fn nesting_is_bounded_instead_of_overflowing_the_stack() {
    let deep = "[".repeat(60_000) + &"]".repeat(60_000);
    assert!(syntax_error(&deep).message.contains("nests more than 64"));
    let deep_not = "{{ ".to_string() + &"not ".repeat(60_000) + "true }}";
    assert!(syntax_error(&deep_not).message.contains("nests more than 64"));
    let deep_parens = "(".repeat(60_000) + "1" + &")".repeat(60_000);
    assert!(syntax_error(&deep_parens).message.contains("nests more than 64"));
    let long_path = "{{ $body".to_string() + &".a".repeat(60_000) + " }}";
    assert!(syntax_error(&long_path).message.contains("nests more than 64"));
    let long_chain = "{{ true".to_string() + &" == true".repeat(60_000) + " }}";
    assert!(syntax_error(&long_chain).message.contains("nests more than 64"));
    let fine = "[".repeat(60) + &"]".repeat(60);
    assert!(Template::parse(&fine).is_ok());
}

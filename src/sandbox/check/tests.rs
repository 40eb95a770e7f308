//! The checks on template sources: shapes that would cost too much are refused before rendering.

use super::super::{render_part, Part};
use super::*;

fn longest() -> minijinja::Value {
    let long = "W".repeat(MAX_VALUE_CHARS);
    minijinja::Value::from(minijinja::value::Serde(
        serde_json::json!({"user_name": long, "product_name": "Payments"}),
    ))
}

/// Runs `f` on a thread with half the stack of the threads that render (2 MiB by default), so
/// a bound that holds here holds there with room to spare.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .expect("the check or the render overflowed a 1 MiB stack")
}

fn refusal(source: String) -> Refusal {
    on_small_stack(move || {
        let started = std::time::Instant::now();
        let refused = render_part(&source, &longest(), Part::Html).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{refused}");
        refused
    })
}

#[test]
fn comment_quotes_do_not_hide_statements_from_the_check() {
    let payload = "{# ' #}{% set s = \"x\" * 100000000 %}{% set s = s ~ s %}{{ s|length }}{# ' #}";
    assert_eq!(refusal(payload.into()).code(), "template_too_expensive");
    let r = refusal("{# ' #}{% macro m(n) %}{{ n }}{% endmacro %}{{ m(7) }}{# ' #}".into());
    assert_eq!(r.code(), "invalid_template", "{r}");
    assert!(r.message().contains("macro"), "{r}");
}

#[test]
fn braces_inside_an_expression_do_not_end_the_tag_for_the_check() {
    let r = refusal("{{ ({'a':{}} and \"y\" * 3000)|length }}".into());
    assert_eq!(r.code(), "template_too_expensive", "{r}");
}

#[test]
fn a_payload_in_a_branch_the_example_data_never_takes_is_refused_all_the_same() {
    let r = refusal("{% if user_name == \"boom\" %}{{ \"x\" * 100000000 }}{% endif %}".into());
    assert_eq!(r.code(), "template_too_expensive", "{r}");
    let r = refusal("{% if user_name == \"boom\" %}{{ user_name|tojson }}{% endif %}".into());
    assert_eq!(r.code(), "invalid_template", "{r}");
}

#[test]
fn expressions_ten_times_deeper_than_the_reported_overflow_are_refused_without_recursing() {
    for source in [
        format!("{{{{ {}1 }}}}", "-".repeat(80_000)),
        format!("{{{{ {}true }}}}", "not ".repeat(80_000)),
        format!("{{{{ user_name{} }}}}", ".a".repeat(300_000)),
        format!("{{{{ {}1{} }}}}", "(".repeat(80_000), ")".repeat(80_000)),
        format!("{{{{ {}1{} }}}}", "[".repeat(80_000), "]".repeat(80_000)),
        format!("{{{{ user_name{} }}}}", "|upper".repeat(80_000)),
        format!("{{{{ user_name{} }}}}", " ~ user_name".repeat(60_000)),
        format!(
            "{}x{}",
            "{% if true %}".repeat(80_000),
            "{% endif %}".repeat(80_000)
        ),
        format!("{{% if a %}}{}{{% endif %}}", "{% elif a %}".repeat(80_000)),
        format!(
            "{}x{}",
            "{% for a in b %}".repeat(80_000),
            "{% endfor %}".repeat(80_000)
        ),
    ] {
        let shown = source.chars().take(40).collect::<String>();
        let r = refusal(source);
        assert_eq!(r.code(), "template_too_expensive", "{shown}: {r}");
    }
}

#[test]
fn the_deepest_templates_the_bounds_allow_still_render_on_a_small_stack() {
    let operators = MAX_TAG_OPERATORS - 1;
    let nested = |inner: &str| {
        format!(
            "{}{inner}{}",
            "{% if true %}".repeat(MAX_NESTING - 1),
            "{% endif %}".repeat(MAX_NESTING - 1)
        )
    };
    for (inner, rendered) in [
        (format!("{{{{ {}1 }}}}", "-".repeat(operators)), "-1"),
        (format!("{{{{ {}true }}}}", "not ".repeat(operators)), "False"),
        (
            format!("{{{{ product_name{} }}}}", "|trim".repeat(operators)),
            "Payments",
        ),
        (
            format!("{{{{ 'a'{} }}}}", " ~ 'a'".repeat(operators)),
            &"a".repeat(100),
        ),
        (format!("{{{{ 100{} }}}}", " - 1".repeat(operators)), "1"),
    ] {
        let source = nested(&inner);
        let out = on_small_stack(move || render_part(&source, &longest(), Part::Html));
        assert_eq!(out.as_deref(), Ok(rendered), "{inner}");
    }
    // Parentheses count twice in the parser's own limit, which refuses them first; an attribute
    // of an undefined value fails when it runs: answers, not crashes.
    for inner in [
        format!("{{{{ {}1{} }}}}", "(".repeat(operators), ")".repeat(operators)),
        format!("{{{{ missing{} }}}}", ".a".repeat(operators)),
    ] {
        let source = nested(&inner);
        let out = on_small_stack(move || render_part(&source, &longest(), Part::Html));
        assert_eq!(out.unwrap_err().code(), "invalid_template");
    }
}

#[test]
fn a_concatenation_chain_over_long_data_is_refused_by_its_cost_not_run() {
    let chain = format!("{{{{ user_name{} }}}}", " ~ user_name".repeat(90));
    let r = refusal(chain);
    assert_eq!(r.code(), "template_too_expensive", "{r}");
    assert!(r.message().contains("MiB"), "{r}");
    // A few concatenations are ordinary.
    let ok = render_part("{{ user_name ~ ' / ' ~ product_name }}", &longest(), Part::Text).unwrap();
    assert_eq!(ok.len(), MAX_VALUE_CHARS + 11);
}

#[test]
fn filters_on_long_data_inside_loops_are_charged_for_every_iteration() {
    let r = refusal("{% for c in user_name %}{{ user_name|upper|length }}{% endfor %}".into());
    assert_eq!(r.code(), "template_too_expensive", "{r}");
    // Per character it is cheap.
    let out = render_part(
        "{% for c in product_name %}{{ c|upper }}{% endfor %}",
        &longest(),
        Part::Text,
    )
    .unwrap();
    assert_eq!(out, "PAYMENTS");
    // Over a literal list, the list's length counts.
    let out = render_part(
        "{% for x in ['a', 'b'] %}{{ user_name|upper|length }} {% endfor %}",
        &longest(),
        Part::Text,
    )
    .unwrap();
    assert_eq!(out, "10000 10000 ");
}

#[test]
fn every_allowed_filter_and_test_is_known_to_the_engine() {
    for name in FILTERS {
        let source = format!("{{{{ product_name|{name} }}}}");
        render_part(&source, &longest(), Part::Text).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for name in TESTS {
        let source = format!("{{{{ product_name is {name} }}}}");
        render_part(&source, &longest(), Part::Text).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

//! The syntax of Kubernetes names, checked wherever a name comes from outside: network and
//! namespace names in an annotation, the node name and annotation key in the configuration,
//! the keys of a state file. One set of rules, so podagent never accepts in one place a name it
//! refuses in another.

const MAX_SUBDOMAIN_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;
/// Longest user value echoed back in an error, so a message stays readable in an Event.
const MAX_SHOWN_CHARS: usize = 40;

/// A Kubernetes DNS-1123 subdomain: dot-separated labels of lower-case letters, digits and '-',
/// each starting and ending with a letter or digit. This is what keeps `;`, `=`, `/`, spaces and
/// other characters with meaning in CNI_ARGS or paths out of everything derived from the name.
pub(crate) fn check_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > MAX_SUBDOMAIN_LEN {
        return Err(format!("is longer than {MAX_SUBDOMAIN_LEN} characters"));
    }
    if !name.split('.').all(is_label_syntax) {
        return Err(format!(
            "{} is not a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', \
             starting and ending with a letter or digit)",
            quoted(name)
        ));
    }
    Ok(())
}

/// A Kubernetes DNS-1123 label, the syntax of a namespace name.
pub(crate) fn check_label(name: &str) -> Result<(), String> {
    if name.len() > MAX_LABEL_LEN {
        return Err(format!("is longer than {MAX_LABEL_LEN} characters"));
    }
    if !is_label_syntax(name) {
        return Err(format!(
            "{} is not a DNS-1123 label (lower-case letters, digits and '-', \
             starting and ending with a letter or digit)",
            quoted(name)
        ));
    }
    Ok(())
}

fn is_label_syntax(label: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = label.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            alnum(first) && alnum(last) && bytes.iter().all(|&b| alnum(b) || b == b'-')
        }
        _ => false,
    }
}

/// A user value made safe to echo: quoted and escaped, and shortened when long.
pub(crate) fn quoted(value: &str) -> String {
    match value.char_indices().nth(MAX_SHOWN_CHARS) {
        Some((cut, _)) => format!("{:?}…", &value[..cut]),
        None => format!("{value:?}"),
    }
}

/// The name part of a qualified name such as an annotation key (`prefix/name`): at most 63
/// letters, digits, '-', '_' and '.', starting and ending with a letter or digit.
pub(crate) fn is_qualified_name(name: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    name.len() <= MAX_LABEL_LEN
        && alnum(name.chars().next())
        && alnum(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

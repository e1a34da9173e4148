//! The `[windows]` table of `cluster.toml`: maintenance windows by name, for rollouts to refer to
//! (`night = "Mon-Fri 22:00-06:00 Europe/Berlin"`).

use std::collections::BTreeMap;

use toml::de::DeValue;

use super::doc::{self, Ctx, Need, Table};
use crate::window::Window;

/// Reads `[windows]`: each key a window's name, each value its text. A window that names no
/// zone is in the coordinator's local zone.
pub(super) fn windows(ctx: &mut Ctx<'_>, root: &Table<'_, '_>) -> BTreeMap<String, Window> {
    let mut out = BTreeMap::new();
    let Some(t) = ctx.table(root, "windows", Need::Optional) else {
        return out;
    };
    for (name, span) in t.keys() {
        if let Err(message) = check_name(name) {
            ctx.report(&span, t.field(name), message);
            continue;
        }
        if let Some(window) = ctx.read(&t, name, Need::Required, window) {
            out.insert(name.to_string(), window);
        }
    }
    out
}

/// Window names follow the rules of group names (`nodes.rs`): letters, digits, '.', '_' and
/// '-', not starting with '.'. `always` is refused: the command line reads it as the window
/// that is always open, so a window of that name could never be chosen.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(format!(
            "invalid window name {name:?}: expected letters, digits, '.', '_' and '-', not \
             starting with '.'"
        ));
    }
    if name.eq_ignore_ascii_case("always") {
        return Err(
            "a window cannot be named \"always\": that word means no window (always open)"
                .to_string(),
        );
    }
    Ok(())
}

fn window(value: &DeValue<'_>) -> Result<Window, String> {
    let text = doc::string(value)?;
    Window::parse(&text).map_err(|err| err.to_string())
}

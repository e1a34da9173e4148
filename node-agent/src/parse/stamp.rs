//! The generation stamp an image carries at `/etc/dfleet/generation`, and the generation named by
//! the lower layer's NFS export path.
//!
//! The stamp is written by the provisioner when it publishes a generation:
//!
//! ```text
//! # written by dfleet image publish
//! image = "compute"
//! generation = 7
//! ```
//!
//! It is TOML; other keys are allowed so the provisioner can add some without breaking old agents.

use dfleet_proto::domain::{Generation, GenerationRef};
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StampError {
    #[error("parsing generation stamp: {0}")]
    Syntax(String),
    #[error("parsing generation stamp: image name is empty")]
    EmptyImage,
}

#[derive(Deserialize)]
struct Stamp {
    image: String,
    generation: u64,
}

pub fn parse(text: &str) -> Result<GenerationRef, StampError> {
    let stamp: Stamp = toml::from_str(text).map_err(|e| {
        // toml's message spans several lines with a source excerpt; keep the first.
        StampError::Syntax(e.message().lines().next().unwrap_or("invalid").to_string())
    })?;
    if stamp.image.trim().is_empty() {
        return Err(StampError::EmptyImage);
    }
    Ok(GenerationRef {
        image: stamp.image,
        generation: Generation(stamp.generation),
    })
}

/// `10.0.0.1:/srv/dfleet/images/compute/7` → `compute:7`, from the last two path components when
/// the last is a number. Anything else (a block device, a bind mount) names no generation.
pub fn from_lower_source(source: &str) -> Option<GenerationRef> {
    let path = &source[source.find('/')?..];
    let mut parts = path.trim_end_matches('/').rsplit('/');
    let generation = parts.next()?.parse().ok()?;
    let image = parts.next().filter(|s| !s.is_empty() && !s.contains(':'))?;
    parts.next()?;
    Some(GenerationRef {
        image: image.to_string(),
        generation: Generation(generation),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_with_comments_and_blank_lines() {
        let g = parse("# written by dfleet\n\nimage = \"compute\"\ngeneration = 7\n").unwrap();
        assert_eq!(g.to_string(), "compute:7");
    }

    #[test]
    fn bad_stamps_say_why() {
        assert_eq!(
            parse("image = \"compute\"\n").unwrap_err().to_string(),
            "parsing generation stamp: missing field `generation`"
        );
        assert!(matches!(
            parse("image = compute\ngeneration = 7"),
            Err(StampError::Syntax(_))
        ));
        assert!(matches!(
            parse("image = \"x\"\ngeneration = -1"),
            Err(StampError::Syntax(_))
        ));
        assert_eq!(
            parse("image = \"\"\ngeneration = 1").unwrap_err(),
            StampError::EmptyImage
        );
    }

    #[test]
    fn generation_from_the_export_path() {
        let g = from_lower_source("10.0.0.1:/srv/dfleet/images/compute/7").unwrap();
        assert_eq!(g.to_string(), "compute:7");
        assert_eq!(
            from_lower_source("[fd00::1]:/srv/dfleet/images/gpu/12/")
                .unwrap()
                .to_string(),
            "gpu:12"
        );
        assert_eq!(from_lower_source("/dev/vda"), None);
        assert_eq!(from_lower_source("10.0.0.1:/srv/images/current"), None);
        assert_eq!(from_lower_source("overlay"), None);
        assert_eq!(from_lower_source("host:/7"), None);
    }
}

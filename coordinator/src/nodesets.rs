//! `dfleet nodeset`: the node-set parser every command uses, on its own, like
//! ClusterShell's `nodeset`. A set without `@groups` is resolved here; one
//! with them is resolved by the coordinator, which knows the inventory's
//! groups and each node's state and generation.

use anyhow::{Result, bail};
use dfleet_proto::pb;
use dfleet_provisioner::nodeset::{self, NoGroups};

use crate::cli::Cli;
use crate::client;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("mode").args(["expand", "fold", "count"])))]
pub struct NodeSetArgs {
    /// Print each name, space-separated (the default).
    #[arg(long, short = 'e')]
    expand: bool,
    /// Print the set folded: `cn[001-004,007]`.
    #[arg(long, short = 'f')]
    fold: bool,
    /// Print how many names.
    #[arg(long, short = 'c')]
    count: bool,
    /// Names to leave out (a node set too).
    #[arg(long, short = 'x')]
    exclude: Option<String>,
    /// Node sets, joined as a union: `cn[01-04] @gpu!gpu3 @state:ready`.
    #[arg(required = true)]
    sets: Vec<String>,
}

/// The names of `set`: locally, or through the coordinator when it names
/// groups.
pub async fn resolve(cli: &Cli, set: &str) -> Result<Vec<String>> {
    if nodeset::has_groups(set) {
        let mut c = client::connect(&cli.target()?).await?;
        let r = c
            .resolve_node_set(pb::NodeSetRequest {
                set: set.to_string(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        return Ok(r.into_inner().names);
    }
    nodeset::resolve(set, crate::fleet::MAX_SET, &NoGroups).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The names of the union of `sets`, without those of `exclude`.
pub async fn resolve_excluding(
    cli: &Cli,
    sets: &[String],
    exclude: Option<&str>,
) -> Result<Vec<String>> {
    let set = sets.join(",");
    if set.trim().is_empty() {
        bail!("an empty node set");
    }
    let mut names = resolve(cli, &set).await?;
    if let Some(x) = exclude.filter(|x| !x.trim().is_empty()) {
        let out: std::collections::HashSet<String> = resolve(cli, x).await?.into_iter().collect();
        names.retain(|n| !out.contains(n));
    }
    Ok(names)
}

pub async fn run(cli: &Cli, args: &NodeSetArgs) -> Result<()> {
    let names = resolve_excluding(cli, &args.sets, args.exclude.as_deref()).await?;
    if args.count {
        println!("{}", names.len());
    } else if args.fold {
        println!("{}", nodeset::fold(&names));
    } else {
        println!("{}", names.join(" "));
    }
    Ok(())
}

//! `thaw publish`, `thaw versions` and `thaw alias`: a function's published
//! versions and its aliases, through Lambda's API.

use anyhow::Context;
use clap::Args;
use thaw_api::versions::{
    AliasRoutingConfiguration, CreateAliasRequest, PublishVersionRequest, UpdateAliasRequest,
};

use crate::client;

/// Arguments of `thaw publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The function's name.
    pub name: String,
    /// The version's description (default: the function's).
    #[arg(long)]
    pub description: Option<String>,
}

/// `thaw publish NAME`: publishes the function's current code and
/// configuration as a new version (or names the last one, if nothing
/// changed since).
pub fn publish(endpoint: &str, args: PublishArgs) -> anyhow::Result<()> {
    let c = client(endpoint)?;
    let v = c
        .publish_version(
            &args.name,
            &PublishVersionRequest {
                description: args.description,
                ..Default::default()
            },
        )
        .with_context(|| format!("cannot publish {}", args.name))?;
    println!("{} version {} ({})", args.name, v.version, v.function_arn);
    Ok(())
}

/// `thaw versions NAME`: the function's versions and aliases.
pub fn list(endpoint: &str, name: &str) -> anyhow::Result<()> {
    let c = client(endpoint)?;
    let versions = c
        .list_versions(name)
        .with_context(|| format!("cannot list the versions of {name}"))?;
    println!(
        "{:<9} {:<29} {:<45} description",
        "version", "last modified", "code sha256"
    );
    for v in &versions {
        println!(
            "{:<9} {:<29} {:<45} {}",
            v.version, v.last_modified, v.code_sha256, v.description
        );
    }
    let aliases = c
        .list_aliases(name)
        .with_context(|| format!("cannot list the aliases of {name}"))?;
    for a in &aliases {
        let routing = a
            .routing_config
            .iter()
            .flat_map(|r| r.additional_version_weights.iter())
            .map(|(v, w)| format!(", {w} to {v}"))
            .collect::<String>();
        println!("alias {} -> {}{routing}", a.name, a.function_version);
    }
    Ok(())
}

/// Arguments of `thaw alias`.
#[derive(Debug, Args)]
pub struct AliasArgs {
    /// The function's name.
    pub name: String,
    /// The alias.
    pub alias: String,
    /// The version it points to (`$LATEST` or a number); created if the
    /// alias does not exist yet.
    pub version: Option<String>,
    /// Send this share of invocations to another version: `VERSION=WEIGHT`
    /// (e.g. `3=0.1`); `--weight none` removes the routing.
    #[arg(long)]
    pub weight: Option<String>,
    /// Delete the alias.
    #[arg(long, conflicts_with_all = ["version", "weight"])]
    pub delete: bool,
}

fn routing(weight: Option<&str>) -> anyhow::Result<Option<AliasRoutingConfiguration>> {
    let Some(w) = weight else { return Ok(None) };
    let mut r = AliasRoutingConfiguration::default();
    if w != "none" {
        let (v, share) = w
            .split_once('=')
            .with_context(|| format!("expected VERSION=WEIGHT, got {w:?}"))?;
        let share: f64 = share
            .parse()
            .with_context(|| format!("{share:?} is not a number"))?;
        r.additional_version_weights.insert(v.to_string(), share);
    }
    Ok(Some(r))
}

/// `thaw alias NAME ALIAS [VERSION] [--weight V=W] [--delete]`.
pub fn alias(endpoint: &str, args: AliasArgs) -> anyhow::Result<()> {
    let c = client(endpoint)?;
    let (name, alias) = (&args.name, &args.alias);
    if args.delete {
        c.delete_alias(name, alias)
            .with_context(|| format!("cannot delete alias {alias} of {name}"))?;
        println!("deleted alias {alias} of {name}");
        return Ok(());
    }
    let routing_config = routing(args.weight.as_deref())?;
    let exists = c.list_aliases(name)?.iter().any(|a| &a.name == alias);
    let a = if exists {
        c.update_alias(
            name,
            alias,
            &UpdateAliasRequest {
                function_version: args.version,
                routing_config,
                ..Default::default()
            },
        )
    } else {
        let version = args
            .version
            .context("a new alias needs the version it points to")?;
        c.create_alias(
            name,
            &CreateAliasRequest {
                name: alias.clone(),
                function_version: version,
                description: None,
                routing_config,
            },
        )
    }
    .with_context(|| format!("cannot save alias {alias} of {name}"))?;
    println!(
        "alias {} -> {} ({})",
        a.name, a.function_version, a.alias_arn
    );
    Ok(())
}

//! `thaw account ...`: accounts and their access keys.

use anyhow::Context;
use thaw_api::auth::{NewAccessKey, ACCESS_KEY_ENV, SECRET_KEY_ENV};

use crate::client;

/// `thaw account ...`.
#[derive(Debug, clap::Subcommand)]
pub enum AccountCommand {
    /// Create an account (as the root account) and print its first key.
    Create {
        /// A name for people: 1-64 of letters, digits and +=,.@_-.
        name: String,
    },
    /// List the accounts and their key ids (as the root account).
    List,
    /// Add an access key to an account (your own, or any as root) and print
    /// it. An account has at most two: to rotate, create the new key, move
    /// your clients to it, then delete the old one.
    CreateKey {
        /// The account's id (twelve digits).
        account: String,
    },
    /// Delete an access key of an account (not its only one).
    DeleteKey {
        /// The account's id.
        account: String,
        /// The key's id.
        key: String,
    },
}

/// Runs `cmd` against the daemon at `endpoint`.
pub fn run(endpoint: &str, cmd: AccountCommand) -> anyhow::Result<()> {
    let c = client(endpoint)?;
    match cmd {
        AccountCommand::Create { name } => {
            let key = c
                .create_account(&name)
                .with_context(|| format!("cannot create account {name}"))?;
            println!("created account {} ({name})", key.account_id);
            print_key(&key);
        }
        AccountCommand::List => {
            let accounts = c.list_accounts().context("cannot list accounts")?;
            println!("{:<14} {:<24} ACCESS KEYS", "ACCOUNT", "NAME");
            for a in accounts {
                println!(
                    "{:<14} {:<24} {}",
                    a.account_id,
                    a.name,
                    a.access_key_ids.join(", ")
                );
            }
        }
        AccountCommand::CreateKey { account } => {
            let key = c
                .create_access_key(&account)
                .with_context(|| format!("cannot create a key for account {account}"))?;
            println!(
                "created access key {} of account {account}",
                key.access_key_id
            );
            print_key(&key);
        }
        AccountCommand::DeleteKey { account, key } => {
            c.delete_access_key(&account, &key)
                .with_context(|| format!("cannot delete key {key} of account {account}"))?;
            println!("deleted access key {key} of account {account}");
        }
    }
    Ok(())
}

/// The key and how to use it: the secret is shown only once.
fn print_key(key: &NewAccessKey) {
    println!();
    println!("  access key id:     {}", key.access_key_id);
    println!("  secret access key: {}", key.secret_access_key);
    println!();
    println!("The secret is not shown again. To use the key with the thaw CLI:");
    println!(
        "  export {ACCESS_KEY_ENV}={} {SECRET_KEY_ENV}={}",
        key.access_key_id, key.secret_access_key
    );
    println!("with boto3 or the AWS CLI: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.");
}

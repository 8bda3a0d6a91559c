//! Function URLs, kept in `$LATEST`'s record by qualifier (`$LATEST` or an
//! alias, as Lambda allows); changing one rewrites `function.json` without
//! changing the revision.

use thaw_api::versions::{qualified_arn, Qualifier};
use thaw_api::{ErrorCode, LambdaError};

use super::{now_lambda, write_record, FunctionRecord, Registry, RegistryError, UrlRecord};

fn not_found() -> RegistryError {
    RegistryError::Invalid(LambdaError::new(
        ErrorCode::ResourceNotFound,
        "The resource you requested does not exist.",
    ))
}

impl Registry {
    /// Creates (`create`) or changes the URL of `name` on `q`: `change`
    /// gets the current one (none when creating) and returns the new one;
    /// its id, creation time and modification time are the registry's.
    pub fn put_url(
        &self,
        name: &str,
        q: &Qualifier,
        create: bool,
        change: impl FnOnce(Option<&UrlRecord>) -> UrlRecord,
    ) -> Result<UrlRecord, RegistryError> {
        let mut state = self.lock();
        let latest = state.latest(name)?;
        match q {
            Qualifier::Latest => {}
            Qualifier::Alias(a) if latest.aliases.contains_key(a) => {}
            Qualifier::Alias(_) => return Err(latest.missing(q)),
            Qualifier::Version(_) => {
                return Err(RegistryError::Invalid(LambdaError::invalid_parameter(
                    "A function URL can be on $LATEST or an alias, not on a version",
                )))
            }
        }
        let key = q.to_string();
        let current = latest.urls.get(&key);
        if create && current.is_some() {
            let arn = qualified_arn(latest.account(), latest.short_name(), q);
            return Err(RegistryError::Invalid(LambdaError::new(
                ErrorCode::ResourceConflict,
                format!("Failed to create function url config for [functionArn = {arn}]. Error message:  FunctionUrlConfig exists for this Lambda function"),
            )));
        }
        if !create && current.is_none() {
            return Err(not_found());
        }
        let now = now_lambda();
        let mut next = change(current);
        next.id = current.map_or_else(
            || uuid::Uuid::new_v4().simple().to_string(),
            |c| c.id.clone(),
        );
        next.created = current.map_or_else(|| now.clone(), |c| c.created.clone());
        next.modified = now;
        let mut record = latest.clone();
        record.urls.insert(key, next.clone());
        write_record(&self.function_dir(name), &record, &self.cipher)?;
        state.functions.insert(name.to_string(), record);
        drop(state);
        tracing::info!(function = %name, qualifier = %q, url = %next.id, auth = %next.auth_type, "function URL saved");
        Ok(next)
    }

    /// The URL of `name` on `q`.
    pub fn url(&self, name: &str, q: &Qualifier) -> Result<UrlRecord, RegistryError> {
        let state = self.lock();
        let latest = state.latest(name)?;
        latest
            .urls
            .get(&q.to_string())
            .cloned()
            .ok_or_else(not_found)
    }

    /// Deletes the URL of `name` on `q`.
    pub fn delete_url(&self, name: &str, q: &Qualifier) -> Result<(), RegistryError> {
        let mut state = self.lock();
        let latest = state.latest(name)?;
        if !latest.urls.contains_key(&q.to_string()) {
            return Err(not_found());
        }
        let mut record = latest.clone();
        record.urls.remove(&q.to_string());
        write_record(&self.function_dir(name), &record, &self.cipher)?;
        state.functions.insert(name.to_string(), record);
        drop(state);
        tracing::info!(function = %name, qualifier = %q, "function URL deleted");
        Ok(())
    }

    /// The function (`$LATEST`'s record), qualifier and configuration of
    /// the URL whose id is `id`.
    pub fn find_url(&self, id: &str) -> Option<(FunctionRecord, Qualifier, UrlRecord)> {
        let state = self.lock();
        state.functions.values().find_map(|f| {
            let (q, u) = f.urls.iter().find(|(_, u)| u.id == id)?;
            Some((f.clone(), Qualifier::parse(q).ok()?, u.clone()))
        })
    }
}

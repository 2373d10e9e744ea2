//! Stream mappings and tokens: written to arrowport's own database first, then to memory.

use super::*;

impl Host {
    pub(super) fn mappings_loaded(&self) -> Result<(), String> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if !*loaded {
            self.registry.load(self.store.load().map_err(|e| format!("could not read arrowport.streams: {e}"))?);
            self.tokens.load(self.store.load_tokens().map_err(|e| format!("could not read arrowport.tokens: {e}"))?);
            *loaded = true;
        }
        Ok(())
    }

    /// `arrowport_create_stream`: a new mapping, persisted, in effect for the next request.
    pub fn create_stream(&self, name: &str, options: &MappingOptions) -> Result<Mapping, String> {
        validate_stream_name(name)?;
        self.mappings_loaded()?;
        if self.registry.get(name).is_some() {
            return Err(format!("stream {name:?} already exists; change it with arrowport_alter_stream"));
        }
        let mapping = self.checked_keys(options.apply(Mapping::default_for(name))?)?;
        self.store.save(&mapping).map_err(|e| e.to_string())?;
        self.registry.put(mapping.clone());
        Ok(mapping)
    }

    /// `arrowport_alter_stream`: changes the options given, keeps the others.
    pub fn alter_stream(&self, name: &str, options: &MappingOptions) -> Result<Mapping, String> {
        self.mappings_loaded()?;
        let current = self
            .registry
            .get(name)
            .ok_or_else(|| format!("stream {name:?} does not exist; create it with arrowport_create_stream"))?;
        let mapping = self.checked_keys(options.apply(current)?)?;
        self.store.save(&mapping).map_err(|e| e.to_string())?;
        self.registry.put(mapping.clone());
        Ok(mapping)
    }

    /// A keyed mapping checked against its table when the table exists: its key columns are the table's (the
    /// table's PRIMARY KEY when the mapping names none, kept in the mapping), its delete column is not. A table
    /// that does not exist yet is checked at the first request.
    fn checked_keys(&self, mut mapping: Mapping) -> Result<Mapping, String> {
        if !mapping.is_keyed() {
            return Ok(mapping);
        }
        let facts = self.store.table_facts(&mapping.target).map_err(|e| e.to_string())?;
        if let Some((columns, primary)) = facts {
            let key = crate::catalog::merge::resolve_key(&mapping, &mapping.target.display(), &columns, &primary)?;
            if mapping.key.is_empty() {
                mapping.key = key;
            }
        }
        Ok(mapping)
    }

    /// `arrowport_drop_stream`: the stream goes back to landing in `main.<name>` (or is refused).
    pub fn drop_stream(&self, name: &str) -> Result<Mapping, String> {
        self.mappings_loaded()?;
        let current = self.registry.get(name).ok_or_else(|| format!("stream {name:?} does not exist"))?;
        self.store.delete(name).map_err(|e| e.to_string())?;
        self.registry.remove(name);
        Ok(current)
    }

    /// `arrowport_streams()`: every mapping.
    pub fn streams(&self) -> Result<Vec<Mapping>, String> {
        self.mappings_loaded()?;
        Ok(self.registry.all())
    }

    /// `arrowport_create_token`: a new token, persisted as a salted hash, in effect at once. Returns the
    /// record and the secret, which is never shown again.
    pub fn create_token(
        &self,
        name: &str,
        scope: Scope,
        access: access::TokenAccess,
        secret: Option<&str>,
    ) -> Result<(TokenRecord, String), String> {
        self.mappings_loaded()?;
        if self.tokens.get(name).is_some() {
            return Err(format!("token {name:?} already exists; revoke it first to replace it"));
        }
        let (mut record, secret) = access::token_with_secret(name, scope, access::now_us(), secret)?;
        record.access = access;
        self.store.insert_token(&record).map_err(|e| e.to_string())?;
        self.tokens.put(record.clone());
        Ok((record, secret))
    }

    /// `arrowport_revoke_token`: refused from the next request on.
    pub fn revoke_token(&self, name: &str) -> Result<TokenRecord, String> {
        self.mappings_loaded()?;
        let record = self.tokens.get(name).ok_or_else(|| format!("token {name:?} does not exist"))?;
        self.store.delete_token(name).map_err(|e| e.to_string())?;
        self.tokens.remove(name);
        Ok(record)
    }

    /// `arrowport_tokens()`: every token without its secret; saves the last-use times seen so far.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, String> {
        self.mappings_loaded()?;
        self.store.save_last_used(&self.tokens.used()).map_err(|e| e.to_string())?;
        Ok(self.tokens.all())
    }
}

//! The audit trail's hash chains (docs/audit.md): sealing entries into one chain per organization,
//! verifying the chains, and Ed25519-signed checkpoints of the chain heads kept outside the
//! database.
//!
//! Entries are written unsealed by the `orgbase.audit_row` trigger in the transaction of the
//! write. The sealer (`seal`, run by the server every second) takes committed unsealed entries in
//! id order and gives each its organization's next sequence number, the previous entry's hash and
//! its own hash over a canonical encoding. Sealing in batches keeps hot organizations from
//! serializing their writes on a chain lock.
//!
//! Canonical encoding (version 1): `SHA-256("orgbase-audit-v1" ‖ prev_hash ‖ f(org_id) ‖
//! f(seq) ‖ f(id) ‖ f(at) ‖ f(actor_kind) ‖ f(actor_user) ‖ f(actor_key) ‖ f(db_role) ‖
//! f(action) ‖ f(table_name) ‖ f(record_id) ‖ f(ip) ‖ f(user_agent) ‖ f(request_id) ‖
//! values_digest)`, where `f(NULL) = 0x00`, `f(text) = 0x01 ‖ u32be(len) ‖ utf8`, every field
//! is PostgreSQL's text form (`at` as integer microseconds since the epoch) and `values_digest =
//! SHA-256(f(old) ‖ f(new))` over the jsonb text of the old and new row. The chain covers the
//! digest, not the values, so a personal value can be redacted (the digest stays) without
//! breaking the chain.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use aws_lc_rs::digest::{Context as Digest, SHA256};
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use futures_util::{StreamExt, pin_mut};
use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, Row};
use uuid::Uuid;

use crate::DbError;

/// The chain of account-level events (sign-up, login, sessions), which belong to no organization.
pub const ACCOUNT_CHAIN: Uuid = Uuid::nil();

const DOMAIN: &[u8] = b"orgbase-audit-v1";
const GENESIS: [u8; 32] = [0; 32];

/// The columns of an entry in the order `Entry::from_row` reads them.
const ENTRY_COLUMNS: &str = "id, org_id, seq, prev_hash, hash, values_digest, \
     redacted_at IS NOT NULL, (extract(epoch FROM at) * 1000000)::int8::text, actor_kind, \
     actor_user::text, actor_key::text, db_role, action, table_name, record_id, ip::text, \
     user_agent, request_id, old::text, new::text";

/// One audit entry as the chain sees it: every hashed field in its text form.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: i64,
    pub org_id: Uuid,
    pub seq: Option<i64>,
    pub prev_hash: Option<Vec<u8>>,
    pub hash: Option<Vec<u8>>,
    pub values_digest: Option<Vec<u8>>,
    pub redacted: bool,
    /// at, actor_kind, actor_user, actor_key, db_role, action, table_name, record_id, ip,
    /// user_agent, request_id.
    fields: [Option<String>; 11],
    old: Option<String>,
    new: Option<String>,
}

impl Entry {
    fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        let mut fields: [Option<String>; 11] = Default::default();
        for (i, f) in fields.iter_mut().enumerate() {
            *f = row.try_get(7 + i)?;
        }
        Ok(Self {
            id: row.try_get(0)?,
            org_id: row.try_get(1)?,
            seq: row.try_get(2)?,
            prev_hash: row.try_get(3)?,
            hash: row.try_get(4)?,
            values_digest: row.try_get(5)?,
            redacted: row.try_get(6)?,
            fields,
            old: row.try_get(18)?,
            new: row.try_get(19)?,
        })
    }

    /// SHA-256 over the old and new values as stored now.
    pub fn current_values_digest(&self) -> [u8; 32] {
        let mut d = Digest::new(&SHA256);
        field(&mut d, self.old.as_deref());
        field(&mut d, self.new.as_deref());
        finish(d)
    }

    /// The entry's hash at position `seq` after `prev`, over `values_digest`.
    pub fn chain_hash(&self, seq: i64, prev: &[u8], values_digest: &[u8]) -> [u8; 32] {
        let mut d = Digest::new(&SHA256);
        d.update(DOMAIN);
        d.update(prev);
        field(&mut d, Some(&self.org_id.to_string()));
        field(&mut d, Some(&seq.to_string()));
        field(&mut d, Some(&self.id.to_string()));
        for f in &self.fields {
            field(&mut d, f.as_deref());
        }
        d.update(values_digest);
        finish(d)
    }
}

fn field(d: &mut Digest, v: Option<&str>) {
    match v {
        None => d.update(&[0]),
        Some(s) => {
            d.update(&[1]);
            d.update(&(s.len() as u32).to_be_bytes());
            d.update(s.as_bytes());
        }
    }
}

fn finish(d: Digest) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(d.finish().as_ref());
    out
}

/// What one sealing round did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sealed {
    pub entries: u64,
    pub orgs: u64,
    /// Seconds between the oldest entry sealed and its sealing.
    pub max_lag_secs: f64,
}

/// Seal up to `max` committed, unsealed entries. `client` must be allowed to update the audit
/// log (the owner role). Only one sealer works at a time (an advisory lock); a second one
/// returns at once with nothing sealed.
pub async fn seal(client: &mut Client, max: i64) -> Result<Sealed, DbError> {
    let tx = client.transaction().await?;
    let locked: bool = tx
        .query_one(
            "SELECT pg_try_advisory_xact_lock(hashtext('orgbase.audit_seal'))",
            &[],
        )
        .await?
        .get(0);
    if !locked {
        return Ok(Sealed::default());
    }
    let sql = format!(
        "SELECT {ENTRY_COLUMNS}, extract(epoch FROM now() - at)::float8 FROM orgbase.audit_log \
         WHERE seq IS NULL ORDER BY id LIMIT $1 FOR UPDATE"
    );
    let rows = tx.query(&sql, &[&max]).await?;
    if rows.is_empty() {
        return Ok(Sealed::default());
    }
    let mut entries = Vec::with_capacity(rows.len());
    let mut max_lag = 0f64;
    for row in &rows {
        entries.push(Entry::from_row(row)?);
        max_lag = max_lag.max(row.try_get::<_, f64>(20)?);
    }
    let orgs: Vec<Uuid> = {
        let mut o: Vec<Uuid> = entries.iter().map(|e| e.org_id).collect();
        o.sort();
        o.dedup();
        o
    };
    let mut heads: HashMap<Uuid, (i64, Vec<u8>)> = HashMap::new();
    for row in tx
        .query(
            "SELECT org_id, seq, hash FROM orgbase.audit_heads WHERE org_id = ANY($1) \
             ORDER BY org_id FOR UPDATE",
            &[&orgs],
        )
        .await?
    {
        heads.insert(row.get(0), (row.get(1), row.get(2)));
    }
    let (mut ids, mut seqs, mut prevs, mut hashes, mut digests) =
        (vec![], vec![], vec![], vec![], vec![]);
    for e in &entries {
        let (seq, prev) = heads
            .entry(e.org_id)
            .or_insert_with(|| (0, GENESIS.to_vec()));
        let next = *seq + 1;
        let digest = e.current_values_digest();
        let hash = e.chain_hash(next, prev, &digest);
        ids.push(e.id);
        seqs.push(next);
        prevs.push(prev.clone());
        hashes.push(hash.to_vec());
        digests.push(digest.to_vec());
        *seq = next;
        *prev = hash.to_vec();
    }
    tx.execute(
        "UPDATE orgbase.audit_log a
            SET seq = u.seq, prev_hash = u.prev, hash = u.hash, values_digest = u.vd,
                sealed_at = now()
           FROM unnest($1::int8[], $2::int8[], $3::bytea[], $4::bytea[], $5::bytea[])
                AS u (id, seq, prev, hash, vd)
          WHERE a.id = u.id",
        &[&ids, &seqs, &prevs, &hashes, &digests],
    )
    .await?;
    let head_orgs: Vec<Uuid> = heads.keys().copied().collect();
    let head_seqs: Vec<i64> = head_orgs.iter().map(|o| heads[o].0).collect();
    let head_hashes: Vec<Vec<u8>> = head_orgs.iter().map(|o| heads[o].1.clone()).collect();
    tx.execute(
        "INSERT INTO orgbase.audit_heads (org_id, seq, hash)
         SELECT * FROM unnest($1::uuid[], $2::int8[], $3::bytea[])
         ON CONFLICT (org_id) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash,
                                            sealed_at = now()",
        &[&head_orgs, &head_seqs, &head_hashes],
    )
    .await?;
    tx.commit().await?;
    Ok(Sealed {
        entries: entries.len() as u64,
        orgs: orgs.len() as u64,
        max_lag_secs: max_lag,
    })
}

/// Seal until nothing is left (for the CLI and tests).
pub async fn seal_all(client: &mut Client) -> Result<u64, DbError> {
    let mut total = 0;
    loop {
        let s = seal(client, 10_000).await?;
        if s.entries == 0 {
            return Ok(total);
        }
        total += s.entries;
    }
}

// Checkpoints -------------------------------------------------------------------------------

/// The Ed25519 key that signs checkpoints, kept as a generated secret under the data directory.
#[derive(Debug)]
pub struct Signer {
    key: Ed25519KeyPair,
}

/// The name of the signing key under the secrets directory.
pub const SIGNING_KEY: &str = "audit_signing_key";

impl Signer {
    /// Load `dir/audit_signing_key` (hex PKCS#8), creating it (0600) on first use.
    pub fn load_or_create(secrets_dir: &Path) -> Result<Self, DbError> {
        if let Some(s) = crate::secrets::read(secrets_dir, SIGNING_KEY)? {
            let der = hex::decode(s.expose()).map_err(|_| {
                DbError::Crypto(format!(
                    "{}: not a hex PKCS#8 key",
                    secrets_dir.join(SIGNING_KEY).display()
                ))
            })?;
            let key = Ed25519KeyPair::from_pkcs8(&der).map_err(|e| {
                DbError::Crypto(format!("{}: {e}", secrets_dir.join(SIGNING_KEY).display()))
            })?;
            return Ok(Self { key });
        }
        let doc = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .map_err(|_| DbError::Crypto("generating an Ed25519 key failed".into()))?;
        let key = Ed25519KeyPair::from_pkcs8(doc.as_ref())
            .map_err(|e| DbError::Crypto(format!("new Ed25519 key: {e}")))?;
        crate::secrets::write(
            secrets_dir,
            SIGNING_KEY,
            &orgbase_core::Secret::new(hex::encode(doc.as_ref())),
        )?;
        Ok(Self { key })
    }

    /// The public key, hex: what an auditor pins (`audit verify --public-key`).
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.public_key().as_ref())
    }
}

/// A signed statement of chain heads at a moment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    pub created_at: String,
    pub heads: Vec<Head>,
    /// Ed25519 public key, hex.
    pub public_key: String,
    /// Ed25519 signature, hex, over the JSON of the other fields in this order, compact.
    pub signature: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Head {
    pub org_id: Uuid,
    pub seq: i64,
    /// SHA-256, hex.
    pub hash: String,
}

#[derive(Serialize)]
struct Unsigned<'a> {
    version: u32,
    created_at: &'a str,
    heads: &'a [Head],
    public_key: &'a str,
}

impl Checkpoint {
    fn signed_bytes(&self) -> Result<Vec<u8>, DbError> {
        serde_json::to_vec(&Unsigned {
            version: self.version,
            created_at: &self.created_at,
            heads: &self.heads,
            public_key: &self.public_key,
        })
        .map_err(|e| DbError::Crypto(e.to_string()))
    }

    /// Check the signature with `trusted` (hex public key) or, without one, with the key the
    /// checkpoint names.
    pub fn verify_signature(&self, trusted: Option<&str>) -> Result<(), String> {
        if let Some(t) = trusted
            && !t.eq_ignore_ascii_case(&self.public_key)
        {
            return Err(format!(
                "signed by key {}, not by the trusted key {t}",
                self.public_key
            ));
        }
        let key = hex::decode(&self.public_key).map_err(|_| "public_key is not hex".to_string())?;
        let sig = hex::decode(&self.signature).map_err(|_| "signature is not hex".to_string())?;
        let msg = self.signed_bytes().map_err(|e| e.to_string())?;
        UnparsedPublicKey::new(&ED25519, key)
            .verify(&msg, &sig)
            .map_err(|_| "the signature does not match its contents".to_string())
    }
}

/// Write a checkpoint of every chain head that moved since the last one into `dir` (file
/// `checkpoint-<UTC time>.json`, written atomically). `client` must be the owner role. Returns
/// the file, or `None` when no head moved.
pub async fn write_checkpoint(
    client: &mut Client,
    signer: &Signer,
    dir: &Path,
) -> Result<Option<PathBuf>, DbError> {
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            "SELECT org_id, seq, hash, to_char(now() AT TIME ZONE 'UTC', \
                    'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
               FROM orgbase.audit_heads WHERE seq > checkpointed_seq ORDER BY org_id FOR UPDATE",
            &[],
        )
        .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let created_at: String = first.get(3);
    let heads: Vec<Head> = rows
        .iter()
        .map(|r| Head {
            org_id: r.get(0),
            seq: r.get(1),
            hash: hex::encode(r.get::<_, Vec<u8>>(2)),
        })
        .collect();
    let mut cp = Checkpoint {
        version: 1,
        created_at,
        heads,
        public_key: signer.public_key_hex(),
        signature: String::new(),
    };
    cp.signature = hex::encode(signer.key.sign(&cp.signed_bytes()?).as_ref());
    let name = format!(
        "checkpoint-{}.json",
        cp.created_at.replace([':', '.'], "").replace('-', "")
    );
    let path = dir.join(&name);
    let body =
        serde_json::to_vec_pretty(&cp).map_err(|e| DbError::Crypto(format!("checkpoint: {e}")))?;
    write_atomic(dir, &name, &body)?;
    let orgs: Vec<Uuid> = cp.heads.iter().map(|h| h.org_id).collect();
    let seqs: Vec<i64> = cp.heads.iter().map(|h| h.seq).collect();
    tx.execute(
        "UPDATE orgbase.audit_heads h SET checkpointed_seq = u.seq
           FROM unnest($1::uuid[], $2::int8[]) AS u (org_id, seq) WHERE h.org_id = u.org_id",
        &[&orgs, &seqs],
    )
    .await?;
    tx.commit().await?;
    Ok(Some(path))
}

fn write_atomic(dir: &Path, name: &str, body: &[u8]) -> Result<(), DbError> {
    use std::io::Write;
    let io = |what: String| {
        move |source: std::io::Error| {
            DbError::Cluster(crate::ClusterError::Io {
                context: what,
                source,
            })
        }
    };
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    f.write_all(body)
        .and_then(|()| f.sync_all())
        .map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, dir.join(name)).map_err(io(format!("renaming {}", tmp.display())))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Every checkpoint in `dir`, signatures checked (with `trusted` when given). A file that does
/// not parse or whose signature fails is an error naming the file.
pub fn load_checkpoints(
    dir: &Path,
    trusted: Option<&str>,
) -> Result<Vec<(PathBuf, Checkpoint)>, String> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("checkpoint-") && n.ends_with(".json"))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    files.sort();
    let mut out = Vec::with_capacity(files.len());
    for path in files {
        let text =
            std::fs::read(&path).map_err(|e| format!("checkpoint {}: {e}", path.display()))?;
        let cp: Checkpoint = serde_json::from_slice(&text)
            .map_err(|e| format!("checkpoint {}: not a checkpoint: {e}", path.display()))?;
        cp.verify_signature(trusted)
            .map_err(|e| format!("checkpoint {}: {e}", path.display()))?;
        out.push((path, cp));
    }
    Ok(out)
}

// Verification -----------------------------------------------------------------------------

/// How a chain was found broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Breach {
    /// The entry's content, values or hash changed.
    Altered,
    /// One or more entries are missing.
    Deleted,
    /// An entry that was never sealed into the chain sits in it.
    Inserted,
    /// Entries are out of their sealed order.
    Reordered,
    /// The chain does not match a signed checkpoint (rewritten, or cut short at the end).
    CheckpointMismatch,
}

/// The first problem in an organization's chain.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub kind: Breach,
    /// The sequence number of the entry named.
    pub seq: i64,
    /// The entry's row id, when there is one.
    pub entry_id: Option<i64>,
    pub message: String,
}

/// The verdict on one organization's chain.
#[derive(Debug, Clone, Serialize)]
pub struct ChainReport {
    pub org_id: Uuid,
    /// Sealed entries read.
    pub entries: u64,
    /// Entries written but not yet sealed (not verified yet).
    pub unsealed: u64,
    /// Entries whose values were redacted (their digest stands in for them).
    pub redacted: u64,
    pub head_seq: i64,
    /// Checkpoint heads this chain was compared against.
    pub checkpoints_checked: u64,
    pub problem: Option<Problem>,
}

impl ChainReport {
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// Checkpoint heads per organization: seq → (hash, file).
type Pins = HashMap<Uuid, BTreeMap<i64, (Vec<u8>, String)>>;

fn pins(checkpoints: &[(PathBuf, Checkpoint)]) -> Pins {
    let mut out: Pins = HashMap::new();
    for (path, cp) in checkpoints {
        for h in &cp.heads {
            if let Ok(hash) = hex::decode(&h.hash) {
                out.entry(h.org_id)
                    .or_default()
                    .insert(h.seq, (hash, path.display().to_string()));
            }
        }
    }
    out
}

/// Recompute every chain (or one organization's) and compare with the checkpoints. `client`
/// sees what its role may see (the owner: everything; a request: its organization).
/// `progress` is called with the number of entries read so far.
pub async fn verify(
    client: &Client,
    org: Option<Uuid>,
    checkpoints: &[(PathBuf, Checkpoint)],
    mut progress: impl FnMut(u64),
) -> Result<Vec<ChainReport>, DbError> {
    let pins = pins(checkpoints);
    let mut unsealed: HashMap<Uuid, u64> = HashMap::new();
    for row in client
        .query(
            "SELECT org_id, count(*) FROM orgbase.audit_log
              WHERE seq IS NULL AND ($1::uuid IS NULL OR org_id = $1) GROUP BY org_id",
            &[&org],
        )
        .await?
    {
        unsealed.insert(row.get(0), row.get::<_, i64>(1) as u64);
    }
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM orgbase.audit_log
          WHERE seq IS NOT NULL AND ($1::uuid IS NULL OR org_id = $1)
          ORDER BY org_id, seq, id"
    );
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&org];
    let stream = client.query_raw(&sql, params).await?;
    pin_mut!(stream);
    let mut reports = Vec::new();
    let mut chain: Option<Walker> = None;
    let mut read = 0u64;
    while let Some(row) = stream.next().await {
        let e = Entry::from_row(&row?)?;
        if chain.as_ref().is_none_or(|c| c.org_id != e.org_id) {
            if let Some(c) = chain.take() {
                reports.push(c.finish(&unsealed));
            }
            chain = Some(Walker::new(e.org_id, pins.get(&e.org_id)));
        }
        if let Some(c) = chain.as_mut() {
            c.push(e);
        }
        read += 1;
        if read.is_multiple_of(1000) {
            progress(read);
        }
    }
    if let Some(c) = chain.take() {
        reports.push(c.finish(&unsealed));
    }
    progress(read);
    // Organizations with only unsealed entries, or pinned by a checkpoint but with no entries.
    let seen: Vec<Uuid> = reports.iter().map(|r| r.org_id).collect();
    let mut missing: Vec<Uuid> = unsealed
        .keys()
        .chain(pins.keys())
        .filter(|o| !seen.contains(o) && org.is_none_or(|x| x == **o))
        .copied()
        .collect();
    missing.sort();
    missing.dedup();
    for o in missing {
        reports.push(Walker::new(o, pins.get(&o)).finish(&unsealed));
    }
    reports.sort_by_key(|r| r.org_id);
    Ok(reports)
}

/// Entries read past the first anomaly, to tell a reordering from an alteration.
const LOOKAHEAD: usize = 1000;

/// Walks one organization's chain in (seq, id) order.
struct Walker {
    org_id: Uuid,
    entries: u64,
    redacted: u64,
    /// The last entry accepted: its seq and hash.
    seq: i64,
    prev: Vec<u8>,
    pinned: BTreeMap<i64, (Vec<u8>, String)>,
    checked: u64,
    problem: Option<Problem>,
    /// The first anomalous entry and what came after it, while the problem is being classified.
    suspect: Option<Vec<Entry>>,
}

impl Walker {
    fn new(org_id: Uuid, pinned: Option<&BTreeMap<i64, (Vec<u8>, String)>>) -> Self {
        Self {
            org_id,
            entries: 0,
            redacted: 0,
            seq: 0,
            prev: GENESIS.to_vec(),
            pinned: pinned.cloned().unwrap_or_default(),
            checked: 0,
            problem: None,
            suspect: None,
        }
    }

    /// Is the entry intact and the next link of the chain?
    fn fits(&self, e: &Entry) -> bool {
        e.seq == Some(self.seq + 1)
            && e.prev_hash.as_deref() == Some(&self.prev[..])
            && intact(e, self.seq + 1)
    }

    fn push(&mut self, e: Entry) {
        self.entries += 1;
        if e.redacted {
            self.redacted += 1;
        }
        if self.problem.is_some() {
            return;
        }
        if let Some(s) = self.suspect.as_mut() {
            s.push(e);
            if s.len() > LOOKAHEAD {
                self.classify();
            }
            return;
        }
        let seq = e.seq.unwrap_or(0);
        if seq <= self.seq {
            // A second entry with a sequence number already taken by a good entry.
            self.problem = Some(Problem {
                kind: Breach::Inserted,
                seq,
                entry_id: Some(e.id),
                message: format!(
                    "entry {} claims seq {seq}, which another entry already holds: inserted",
                    e.id
                ),
            });
            return;
        }
        if self.fits(&e) {
            self.accept(&e);
            return;
        }
        self.suspect = Some(vec![e]);
    }

    fn accept(&mut self, e: &Entry) {
        self.seq = e.seq.unwrap_or(self.seq + 1);
        self.prev = e.hash.clone().unwrap_or_default();
        if let Some((hash, file)) = self.pinned.get(&self.seq) {
            self.checked += 1;
            if *hash != self.prev {
                self.problem = Some(Problem {
                    kind: Breach::CheckpointMismatch,
                    seq: self.seq,
                    entry_id: Some(e.id),
                    message: format!(
                        "entry seq {} differs from checkpoint {file}: the chain was rewritten at \
                         or before it",
                        self.seq
                    ),
                });
            }
        }
    }

    /// Name the first anomaly, using the entries read after it.
    fn classify(&mut self) {
        let Some(mut s) = self.suspect.take() else {
            return;
        };
        let expected = self.seq + 1;
        let first = s.remove(0);
        let seq = first.seq.unwrap_or(0);
        // Several entries at this position: the one that fits is genuine, the rest inserted.
        if let Some(pos) = s.iter().position(|x| x.seq == first.seq && self.fits(x)) {
            let good = s.remove(pos);
            self.problem = Some(Problem {
                kind: Breach::Inserted,
                seq,
                entry_id: Some(first.id),
                message: format!(
                    "entry {} at seq {seq} was not sealed into the chain (entry {} holds that \
                     place): inserted",
                    first.id, good.id
                ),
            });
            return;
        }
        if seq > expected {
            let (kind, message) = if intact(&first, seq) {
                let gone = if seq == expected + 1 {
                    format!("entry seq {expected} is missing")
                } else {
                    format!("entries seq {expected}–{} are missing", seq - 1)
                };
                (Breach::Deleted, format!("{gone}: deleted"))
            } else {
                (
                    Breach::Altered,
                    format!(
                        "entry seq {seq} (id {}) does not match its hash: altered",
                        first.id
                    ),
                )
            };
            self.problem = Some(Problem {
                kind,
                seq: expected,
                entry_id: None,
                message,
            });
            return;
        }
        // The entry that really comes next is further on: the order was changed.
        if let Some(next) = s
            .iter()
            .find(|x| x.prev_hash.as_deref() == Some(&self.prev[..]))
        {
            self.problem = Some(Problem {
                kind: Breach::Reordered,
                seq,
                entry_id: Some(first.id),
                message: format!(
                    "entry seq {seq} (id {}) is out of order: entry id {} (now at seq {}) was \
                     sealed after seq {}: reordered",
                    first.id,
                    next.id,
                    next.seq.unwrap_or(0),
                    self.seq
                ),
            });
            return;
        }
        let problem = if !intact(&first, seq) {
            let what = if !first.redacted
                && first.values_digest.as_deref() != Some(&first.current_values_digest()[..])
            {
                "its old/new values were changed"
            } else {
                "it does not match its hash"
            };
            Problem {
                kind: Breach::Altered,
                seq,
                entry_id: Some(first.id),
                message: format!("entry seq {seq} (id {}): {what}: altered", first.id),
            }
        } else {
            Problem {
                kind: Breach::Altered,
                seq: self.seq.max(1),
                entry_id: None,
                message: format!(
                    "entry seq {seq} (id {}) does not follow entry seq {}: entry seq {} was \
                     altered and re-hashed, or entries were removed or inserted before seq {seq}",
                    first.id, self.seq, self.seq
                ),
            }
        };
        self.problem = Some(problem);
    }

    fn finish(mut self, unsealed: &HashMap<Uuid, u64>) -> ChainReport {
        if self.suspect.is_some() {
            self.classify();
        }
        if self.problem.is_none()
            && let Some((&last, (_, file))) = self.pinned.iter().next_back()
            && last > self.seq
        {
            self.problem = Some(Problem {
                kind: Breach::CheckpointMismatch,
                seq: self.seq + 1,
                entry_id: None,
                message: format!(
                    "the chain ends at seq {} but checkpoint {file} saw seq {last}: entries \
                     after seq {} were deleted",
                    self.seq, self.seq
                ),
            });
        }
        ChainReport {
            org_id: self.org_id,
            entries: self.entries,
            unsealed: unsealed.get(&self.org_id).copied().unwrap_or(0),
            redacted: self.redacted,
            head_seq: self.seq,
            checkpoints_checked: self.checked,
            problem: self.problem,
        }
    }
}

/// Does the entry hash to its stored hash at position `seq`, with its values unchanged (or
/// redacted)?
fn intact(e: &Entry, seq: i64) -> bool {
    let (Some(prev), Some(hash), Some(digest)) = (&e.prev_hash, &e.hash, &e.values_digest) else {
        return false;
    };
    if !e.redacted && digest[..] != e.current_values_digest()[..] {
        return false;
    }
    e.chain_hash(seq, prev, digest)[..] == hash[..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: i64) -> Entry {
        Entry {
            id,
            org_id: Uuid::nil(),
            seq: None,
            prev_hash: None,
            hash: None,
            values_digest: None,
            redacted: false,
            fields: Default::default(),
            old: None,
            new: Some(r#"{"a": 1}"#.into()),
        }
    }

    #[test]
    fn encoding_separates_fields() {
        // ("ab", NULL) and ("a", "b") must not hash alike.
        let mut a = entry(1);
        a.old = Some("ab".into());
        a.new = None;
        let mut b = entry(1);
        b.old = Some("a".into());
        b.new = Some("b".into());
        assert_ne!(a.current_values_digest(), b.current_values_digest());
        let d = a.current_values_digest();
        assert_ne!(a.chain_hash(1, &GENESIS, &d), a.chain_hash(2, &GENESIS, &d));
    }

    #[test]
    fn checkpoints_sign_and_detect_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_create(dir.path()).unwrap();
        let again = Signer::load_or_create(dir.path()).unwrap();
        assert_eq!(signer.public_key_hex(), again.public_key_hex());
        let mut cp = Checkpoint {
            version: 1,
            created_at: "2026-01-01T00:00:00Z".into(),
            heads: vec![Head {
                org_id: Uuid::nil(),
                seq: 3,
                hash: "00".repeat(32),
            }],
            public_key: signer.public_key_hex(),
            signature: String::new(),
        };
        cp.signature = hex::encode(signer.key.sign(&cp.signed_bytes().unwrap()).as_ref());
        cp.verify_signature(None).unwrap();
        cp.verify_signature(Some(&signer.public_key_hex())).unwrap();
        assert!(cp.verify_signature(Some(&"11".repeat(32))).is_err());
        cp.heads[0].seq = 2;
        assert!(cp.verify_signature(None).is_err());
    }
}

//! The export package of an access or portability request (D-6): one zip
//! with every source's records as JSON and CSV, a readable summary of the
//! Art. 15(1) information, and `manifest.json` listing the sources, record
//! counts, the generation time and the SHA-256 of every other file.
//!
//! The records come from per-source staging files (JSON lines written while
//! the sources streamed) and are copied into the zip line by line, so memory
//! stays bounded whatever the number of records. Runs on a blocking thread.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead, BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
};

use anyhow::Context;
use chrono::{DateTime, Utc};
use custodia_core::private_files;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use zip::{CompressionMethod, ZipWriter, write::SimpleFileOptions};

/// One source's contribution.
#[derive(Debug, Clone)]
pub struct SourcePart {
    /// Source id.
    pub source_id: String,
    /// Display name.
    pub display_name: String,
    /// `exported` or `handled_manually`.
    pub status: String,
    /// Manual handling note, if any.
    pub note: String,
}

/// What to put in the package.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `requests/{id}`.
    pub request: String,
    /// ACCESS or PORTABILITY.
    pub request_type: String,
    /// When the package is generated.
    pub generated_at: DateTime<Utc>,
    /// Staging directory with `<source>.jsonl` and `<source>.meta.json`.
    pub staging: PathBuf,
    /// The zip to write.
    pub output: PathBuf,
    /// The sources, in order.
    pub sources: Vec<SourcePart>,
}

/// The built package.
#[derive(Debug, Clone)]
pub struct Built {
    /// Size of the zip.
    pub size: i64,
    /// Lowercase hex SHA-256 of the zip.
    pub sha256: String,
    /// Records, all sources together.
    pub record_count: i64,
}

/// A writer that hashes and counts what passes through.
struct Hashing<'a, W: Write> {
    inner: &'a mut W,
    hash: Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn entry<W: Write + std::io::Seek>(
    zip: &mut ZipWriter<W>,
    name: &str,
    files: &mut Vec<Value>,
    body: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .large_file(true);
    zip.start_file(name, options)?;
    let mut h = Hashing {
        inner: zip,
        hash: Sha256::new(),
        size: 0,
    };
    body(&mut h)?;
    let (hash, size) = (hex::encode(h.hash.finalize()), h.size);
    files.push(json!({ "path": name, "sha256": hash, "size_bytes": size }));
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Copies one source's records into `data/<source>.json` and `.csv`;
/// returns the counts per category.
fn copy_records<W: Write + std::io::Seek>(
    zip: &mut ZipWriter<W>,
    staging: &Path,
    source_id: &str,
    files: &mut Vec<Value>,
) -> anyhow::Result<BTreeMap<String, i64>> {
    let path = staging.join(format!("{source_id}.jsonl"));
    let mut counts = BTreeMap::new();
    if !path.exists() {
        return Ok(counts);
    }
    entry(zip, &format!("data/{source_id}.json"), files, |w| {
        let reader = BufReader::new(File::open(&path)?);
        w.write_all(b"[\n")?;
        let mut first = true;
        for line in reader.lines() {
            let line = line?;
            if line.is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&line).context("staging line")?;
            *counts.entry(text(&v["category"])).or_insert(0) += 1;
            if !first {
                w.write_all(b",\n")?;
            }
            first = false;
            w.write_all(line.as_bytes())?;
        }
        w.write_all(b"\n]\n")?;
        Ok(())
    })?;
    entry(zip, &format!("data/{source_id}.csv"), files, |w| {
        let reader = BufReader::new(File::open(&path)?);
        let mut csv = custodia_core::csv_out::CsvWriter::new(w);
        csv.row([
            "category",
            "record_id",
            "create_time",
            "update_time",
            "fields",
        ])?;
        for line in reader.lines() {
            let line = line?;
            if line.is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&line).context("staging line")?;
            let cells = [
                text(&v["category"]),
                text(&v["record_id"]),
                text(&v["create_time"]),
                text(&v["update_time"]),
                v["fields"].to_string(),
            ];
            csv.row(cells)?;
        }
        csv.finish()?;
        Ok(())
    })?;
    Ok(counts)
}

fn meta(staging: &Path, source_id: &str) -> Value {
    std::fs::read(staging.join(format!("{source_id}.meta.json")))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(json!({}))
}

fn list(v: &Value) -> String {
    match v.as_array() {
        Some(a) if !a.is_empty() => a.iter().map(text).collect::<Vec<_>>().join(", "),
        _ => "not stated by the source".to_string(),
    }
}

fn summary(plan: &Plan, per_source: &[(SourcePart, BTreeMap<String, i64>, Value)]) -> String {
    let mut s = String::new();
    s.push_str("# Your personal data\n\n");
    s.push_str(&format!(
        "This package answers your {} request `{}`. It was generated on {} and holds every \
         record the systems below keep about you, as JSON (machine-readable, Art. 20) and CSV.\n\n",
        plan.request_type.to_lowercase(),
        plan.request,
        plan.generated_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    ));
    s.push_str(
        "For each kind of data you will find (Art. 15(1) GDPR): the purposes of the \
        processing, the categories of data, the recipients, how long it is kept, and where it \
        comes from when not from you.\n\n",
    );
    for (part, counts, meta) in per_source {
        s.push_str(&format!(
            "## {} (`{}`)\n\n",
            part.display_name, part.source_id
        ));
        if part.status == "handled_manually" {
            s.push_str(&format!(
                "This system was handled by hand by the data protection team: {}\n\n",
                part.note
            ));
        }
        let total: i64 = counts.values().sum();
        s.push_str(&format!("Records: {total}\n\n"));
        let described: Vec<Value> = meta["categories"].as_array().cloned().unwrap_or_default();
        let mut seen = Vec::new();
        for c in &described {
            let name = text(&c["category"]);
            seen.push(name.clone());
            s.push_str(&format!(
                "### {name} ({} records)\n\n- What it is: {}\n- Purposes (Art. 15(1)(a)): {}\n\
                 - Categories of data (b): {name}\n- Recipients (c): {}\n- Kept (d): {}\n\
                 - Source (g): {}\n\n",
                counts.get(&name).copied().unwrap_or(0),
                if text(&c["description"]).is_empty() {
                    "not stated by the source".into()
                } else {
                    text(&c["description"])
                },
                list(&c["purposes"]),
                list(&c["recipients"]),
                {
                    let r = &c["retention"];
                    let p = text(&r["period"]);
                    if p.is_empty() {
                        "not stated by the source".to_string()
                    } else {
                        format!("{p} after {} {}", text(&r["anchor"]), text(&r["criteria"]))
                    }
                },
                if text(&c["origin"]).is_empty() {
                    "you".into()
                } else {
                    text(&c["origin"])
                },
            ));
        }
        for (name, n) in counts {
            if !seen.contains(name) {
                s.push_str(&format!(
                    "### {name} ({n} records)\n\nThe source did not describe this category.\n\n"
                ));
            }
        }
    }
    s.push_str(
        "## Your rights\n\nYou may ask for your data to be rectified or erased, or its \
        processing restricted, and object to it (Art. 16-21). You may complain to the \
        supervisory authority (in France the CNIL, in Luxembourg the CNPD).\n",
    );
    s
}

/// Builds the zip of `plan`.
pub fn build(plan: &Plan) -> anyhow::Result<Built> {
    if let Some(dir) = plan.output.parent() {
        private_files::create_dir_all(dir)?;
    }
    let tmp = plan.output.with_extension("zip.partial");
    let file = private_files::file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let mut zip = ZipWriter::new(BufWriter::new(file));
    let mut files = Vec::new();
    let mut per_source = Vec::new();
    let mut total = 0i64;
    for part in &plan.sources {
        let counts = copy_records(&mut zip, &plan.staging, &part.source_id, &mut files)?;
        total += counts.values().sum::<i64>();
        per_source.push((part.clone(), counts, meta(&plan.staging, &part.source_id)));
    }
    let summary = summary(plan, &per_source);
    entry(&mut zip, "summary.md", &mut files, |w| {
        w.write_all(summary.as_bytes())?;
        Ok(())
    })?;
    let manifest = json!({
        "format": "custodia-export/1",
        "request": plan.request,
        "request_type": plan.request_type,
        "generated_at": plan.generated_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "record_count": total,
        "sources": per_source.iter().map(|(p, counts, m)| json!({
            "data_source": format!("dataSources/{}", p.source_id),
            "display_name": if text(&m["display_name"]).is_empty() { p.display_name.clone() } else { text(&m["display_name"]) },
            "status": p.status,
            "note": p.note,
            "record_count": counts.values().sum::<i64>(),
            "categories": counts,
        })).collect::<Vec<_>>(),
        "files": files,
    });
    let options = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    zip.start_file("manifest.json", options)?;
    zip.write_all(&serde_json::to_vec_pretty(&manifest)?)?;
    let mut out = zip.finish()?;
    out.flush()?;
    out.get_ref().sync_all()?;
    drop(out);
    std::fs::rename(&tmp, &plan.output)?;
    let mut hash = Sha256::new();
    let mut f = File::open(&plan.output)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0i64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        size += n as i64;
    }
    Ok(Built {
        size,
        sha256: hex::encode(hash.finalize()),
        record_count: total,
    })
}

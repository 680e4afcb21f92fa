//! Labelled dataset folders: a `manifest.csv` with one row per recording.
//!
//! Required columns: `path` (relative to the manifest's folder), `machine_type`, `machine_id`,
//! `label` (`normal` or `anomaly`). `domain` and `attribute` (the operating pattern) may be empty
//! or absent; other columns (sample rate, md5, provenance…) are carried by the file and ignored.
//!
//! A manifest read only to find which machine a recording is of ([`Listings`]) needs no `label`:
//! a plant scoring today's recordings does not know yet whether they are faulty.

use std::path::{Path, PathBuf};

/// The file every dataset folder holds.
pub const MANIFEST: &str = "manifest.csv";

/// Whether a recording is of a healthy machine.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    Normal,
    Anomaly,
}

impl Label {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Anomaly => "anomaly",
        }
    }
}

/// One recording as its manifest lists it: labelled (`Recording`, what training and evaluation
/// read) or perhaps not ([`Listing`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording<L = Label> {
    pub path: PathBuf,
    pub machine_type: String,
    pub machine_id: String,
    pub domain: String,
    pub attribute: String,
    pub label: L,
}

/// A recording whose manifest may leave its label out.
pub type Listing = Recording<Option<Label>>;

/// How a manifest's `label` field is read into a recording's label.
trait LabelField: Sized {
    /// Whether a manifest without a `label` column is refused.
    const COLUMN_REQUIRED: bool;
    /// The label of a field, absent or empty; the problem with it otherwise.
    fn from_field(value: Option<&str>) -> Result<Self, String>;
}

impl LabelField for Label {
    const COLUMN_REQUIRED: bool = true;

    fn from_field(value: Option<&str>) -> Result<Self, String> {
        match value.unwrap_or_default().to_ascii_lowercase().as_str() {
            "normal" => Ok(Label::Normal),
            "anomaly" | "anomalous" | "abnormal" => Ok(Label::Anomaly),
            "" => Err("empty".into()),
            other => Err(format!("`{other}` is neither `normal` nor `anomaly`")),
        }
    }
}

impl LabelField for Option<Label> {
    const COLUMN_REQUIRED: bool = false;

    fn from_field(value: Option<&str>) -> Result<Self, String> {
        match value {
            None | Some("") => Ok(None),
            given => Label::from_field(given).map(Some),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{}: no {MANIFEST} in this folder or in its subfolders", .0.display())]
    NotADataset(PathBuf),
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
    #[error("{}, line {line}, field `{field}`: {problem}", path.display())]
    Field {
        path: PathBuf,
        line: u64,
        field: &'static str,
        problem: String,
    },
}

/// The most rows one manifest may hold; a runaway file should fail, not fill memory.
pub const MAX_ROWS: usize = 1_000_000;

/// Every recording under `dir`: a dataset folder (with a manifest) or a folder of them.
pub fn discover(dir: &Path) -> Result<Vec<Recording>, ManifestError> {
    let own = dir.join(MANIFEST);
    if own.is_file() {
        return read(&own);
    }
    let entries = std::fs::read_dir(dir).map_err(|source| ManifestError::Read {
        path: dir.to_owned(),
        source,
    })?;
    let mut folders: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.join(MANIFEST).is_file())
        .collect();
    if folders.is_empty() {
        return Err(ManifestError::NotADataset(dir.to_owned()));
    }
    folders.sort();
    let mut recordings = Vec::new();
    for folder in folders {
        recordings.extend(read(&folder.join(MANIFEST))?);
    }
    Ok(recordings)
}

/// The row that lists `recording` in the nearest manifest in its folder or a folder above it:
/// datasets keep one manifest at their root and recordings in subfolders (`valve/test/…`), so a
/// file's own folder often has none. A manifest that does not list the file is passed over; one
/// that cannot be read is an error, named, since it may be the one meant to list it.
pub fn listing_of(recording: &Path) -> Result<Option<Listing>, ManifestError> {
    Listings::default().listing_of(recording)
}

/// [`listing_of`] for many recordings, each manifest read once.
#[derive(Debug, Default)]
pub struct Listings {
    manifests: std::collections::HashMap<PathBuf, Vec<Listing>>,
}

impl Listings {
    pub fn listing_of(&mut self, recording: &Path) -> Result<Option<Listing>, ManifestError> {
        let unreadable = |source| ManifestError::Read {
            path: recording.to_owned(),
            source,
        };
        // Folders are walked up from where the file is named (a dataset may link its recordings
        // in from elsewhere), `..` resolved first so that only folders above it are walked; rows
        // are compared with the file it really is.
        let named = lexically_normal(&std::path::absolute(recording).map_err(unreadable)?);
        let file = recording.canonicalize().map_err(unreadable)?;
        let names = [named.file_name(), file.file_name()];
        for folder in named.ancestors().skip(1) {
            let manifest = folder.join(MANIFEST);
            if !manifest.is_file() {
                continue;
            }
            let rows = match self.manifests.entry(manifest) {
                std::collections::hash_map::Entry::Occupied(rows) => rows.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    let rows = parse(entry.key())?;
                    entry.insert(rows)
                }
            };
            let listed = rows.iter().find(|row| {
                names.contains(&row.path.file_name())
                    && row
                        .path
                        .canonicalize()
                        .is_ok_and(|row_file| row_file == file)
            });
            if listed.is_some() {
                return Ok(listed.cloned());
            }
        }
        Ok(None)
    }
}

/// `path` with `.` and `..` resolved by its components alone, links left as they are.
fn lexically_normal(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                normal.pop();
            }
            other => normal.push(other),
        }
    }
    normal
}

/// Reads one manifest; paths in it become paths relative to the current directory.
pub fn read(manifest: &Path) -> Result<Vec<Recording>, ManifestError> {
    parse(manifest)
}

fn parse<L: LabelField>(manifest: &Path) -> Result<Vec<Recording<L>>, ManifestError> {
    let base = manifest.parent().unwrap_or(Path::new("."));
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(manifest)
        .map_err(|e| invalid(manifest, e))?;
    let headers = reader.headers().map_err(|e| invalid(manifest, e))?.clone();
    let column = |name: &'static str| headers.iter().position(|h| h == name);
    let required = |name: &'static str| {
        column(name).ok_or_else(|| ManifestError::Invalid {
            path: manifest.to_owned(),
            problem: format!("missing column `{name}`"),
        })
    };
    let (path, machine_type, machine_id) = (
        required("path")?,
        required("machine_type")?,
        required("machine_id")?,
    );
    let label = if L::COLUMN_REQUIRED {
        Some(required("label")?)
    } else {
        column("label")
    };
    let (domain, attribute) = (column("domain"), column("attribute"));

    let mut recordings = Vec::new();
    for row in reader.records() {
        let row = row.map_err(|e| invalid(manifest, e))?;
        let line = row.position().map_or(0, csv::Position::line);
        if recordings.len() == MAX_ROWS {
            return Err(ManifestError::Invalid {
                path: manifest.to_owned(),
                problem: format!("more than {MAX_ROWS} rows"),
            });
        }
        let field = |index: usize, name: &'static str| -> Result<String, ManifestError> {
            match row.get(index) {
                Some(value) if !value.is_empty() => Ok(value.to_owned()),
                _ => Err(ManifestError::Field {
                    path: manifest.to_owned(),
                    line,
                    field: name,
                    problem: "empty".into(),
                }),
            }
        };
        let optional = |index: Option<usize>| {
            index
                .and_then(|i| row.get(i))
                .unwrap_or_default()
                .to_owned()
        };
        let label = L::from_field(label.and_then(|i| row.get(i))).map_err(|problem| {
            ManifestError::Field {
                path: manifest.to_owned(),
                line,
                field: "label",
                problem,
            }
        })?;
        recordings.push(Recording {
            path: base.join(field(path, "path")?),
            machine_type: field(machine_type, "machine_type")?,
            machine_id: field(machine_id, "machine_id")?,
            domain: optional(domain),
            attribute: optional(attribute),
            label,
        });
    }
    if recordings.is_empty() {
        return Err(ManifestError::Invalid {
            path: manifest.to_owned(),
            problem: "no recordings listed".into(),
        });
    }
    Ok(recordings)
}

fn invalid(path: &Path, error: csv::Error) -> ManifestError {
    match error.kind() {
        csv::ErrorKind::Io(_) => ManifestError::Invalid {
            path: path.to_owned(),
            problem: format!("cannot read: {error}"),
        },
        _ => ManifestError::Invalid {
            path: path.to_owned(),
            problem: format!("not a valid CSV file: {error}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(root: &Path, name: &str, rows: &str) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join(MANIFEST),
            format!("path,machine_type,machine_id,domain,attribute,label,md5\n{rows}"),
        )
        .expect("write");
        dir
    }

    #[test]
    fn reads_a_dataset_or_a_folder_of_datasets() {
        let root = tempfile::tempdir().expect("tempdir");
        let valve = dataset(
            root.path(),
            "valve",
            "a.wav,valve,s00,source,pat_00,normal,x\nb.wav,valve,s00,,pat_02,anomaly,y\n",
        );
        dataset(root.path(), "fan", "c.wav,fan,id_00,,,normal,z\n");
        let one = discover(&valve).expect("one dataset");
        assert_eq!(one.len(), 2);
        assert_eq!(one[1].label, Label::Anomaly);
        assert_eq!(one[1].attribute, "pat_02");
        assert_eq!(one[0].path, valve.join("a.wav"));
        let all = discover(root.path()).expect("folder of datasets");
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].machine_type, "fan", "folders are read in name order");
    }

    #[test]
    fn a_recording_is_listed_by_the_nearest_manifest_above_it_that_names_it() {
        let root = tempfile::tempdir().expect("tempdir");
        let valve = dataset(
            root.path(),
            "valve",
            "test/a.wav,valve,s00,,pat_00,anomaly,x\ntrain/a.wav,valve,s00,,pat_02,normal,y\n",
        );
        for folder in ["test", "train", "other"] {
            std::fs::create_dir_all(valve.join(folder)).expect("mkdir");
            std::fs::write(valve.join(folder).join("a.wav"), b"RIFF").expect("write");
        }
        // Same file name in two folders: the row is the one whose path is this file.
        let test = listing_of(&valve.join("test/a.wav"))
            .expect("readable")
            .expect("listed");
        assert_eq!(
            (test.label, test.attribute.as_str()),
            (Some(Label::Anomaly), "pat_00")
        );
        let train = listing_of(&valve.join("test/../train/a.wav"))
            .expect("readable")
            .expect("listed");
        assert_eq!(train.label, Some(Label::Normal));
        // `test/..` is not above the file: a broken manifest there is not read.
        std::fs::write(valve.join("test").join(MANIFEST), "not,a\nmanifest\n").expect("write");
        let mut listings = Listings::default();
        for _ in 0..2 {
            let train = listings
                .listing_of(&valve.join("test/../train/a.wav"))
                .expect("readable")
                .expect("listed");
            assert_eq!(train.label, Some(Label::Normal));
        }
        std::fs::remove_file(valve.join("test").join(MANIFEST)).expect("remove");
        assert_eq!(
            listing_of(&valve.join("other/a.wav")).expect("readable"),
            None,
            "a manifest that does not list the file says nothing about it"
        );
        // A nearer manifest that lists other files is passed over.
        std::fs::write(
            valve.join("test").join(MANIFEST),
            "path,machine_type,machine_id,label\nb.wav,fan,id_00,normal\n",
        )
        .expect("write");
        let test = listing_of(&valve.join("test/a.wav"))
            .expect("readable")
            .expect("listed above");
        assert_eq!(test.machine_type, "valve");
        // An unreadable manifest on the way is named, not skipped.
        std::fs::write(
            valve.join("test").join(MANIFEST),
            "path,label\na.wav,normal\n",
        )
        .expect("write");
        let error = listing_of(&valve.join("test/a.wav"))
            .expect_err("broken manifest")
            .to_string();
        assert!(error.contains("missing column `machine_type`"), "{error}");
        assert!(listing_of(&valve.join("missing.wav")).is_err());
        // A dataset that links its recordings in from elsewhere is still the one that lists them.
        let linked = dataset(root.path(), "linked", "clip.wav,fan,id_06,,,anomaly,z\n");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(valve.join("other/a.wav"), linked.join("clip.wav"))
                .expect("symlink");
            let row = listing_of(&linked.join("clip.wav"))
                .expect("readable")
                .expect("listed where it is linked");
            assert_eq!(
                (row.machine_id.as_str(), row.label),
                ("id_06", Some(Label::Anomaly))
            );
        }
    }

    #[test]
    fn a_manifest_that_only_names_machines_lists_recordings_without_labels() {
        let root = tempfile::tempdir().expect("tempdir");
        let hall = root.path().join("hall");
        std::fs::create_dir_all(&hall).expect("mkdir");
        for file in ["a.wav", "b.wav", "c.wav"] {
            std::fs::write(hall.join(file), b"RIFF").expect("write");
        }
        std::fs::write(
            hall.join(MANIFEST),
            "path,machine_type,machine_id\na.wav,fan,id_00\nb.wav,valve,s00\n",
        )
        .expect("write");
        let mut listings = Listings::default();
        let a = listings
            .listing_of(&hall.join("a.wav"))
            .expect("readable")
            .expect("listed");
        assert_eq!(
            (a.machine_type.as_str(), a.machine_id.as_str(), a.label),
            ("fan", "id_00", None)
        );
        // Training and evaluation need the label: the same manifest is refused there.
        let error = discover(&hall).expect_err("no label column").to_string();
        assert!(error.contains("missing column `label`"), "{error}");

        // A label column may be left empty where the state is not known, but a label that is
        // given must be one.
        std::fs::write(
            hall.join(MANIFEST),
            "path,machine_type,machine_id,label\na.wav,fan,id_00,\nb.wav,valve,s00,anomaly\n",
        )
        .expect("write");
        let mut listings = Listings::default();
        let labels: Vec<_> = ["a.wav", "b.wav"]
            .iter()
            .map(|file| {
                listings
                    .listing_of(&hall.join(file))
                    .expect("readable")
                    .expect("listed")
                    .label
            })
            .collect();
        assert_eq!(labels, [None, Some(Label::Anomaly)]);
        let error = discover(&hall).expect_err("empty label").to_string();
        assert!(error.contains("line 2, field `label`: empty"), "{error}");
        std::fs::write(
            hall.join(MANIFEST),
            "path,machine_type,machine_id,label\na.wav,fan,id_00,\nb.wav,valve,s00,anomaly\nc.wav,valve,s00,broken\n",
        )
        .expect("write");
        let error = listing_of(&hall.join("a.wav"))
            .expect_err("bad label")
            .to_string();
        assert!(error.contains("line 4, field `label`"), "{error}");
        assert!(error.contains("`broken`"), "{error}");
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_field() {
        let root = tempfile::tempdir().expect("tempdir");
        let bad = dataset(
            root.path(),
            "bad",
            "a.wav,valve,s00,,,normal,x\nb.wav,valve,s00,,,broken,y\n",
        );
        let error = discover(&bad).expect_err("bad label").to_string();
        assert!(
            error.contains("manifest.csv, line 3, field `label`"),
            "{error}"
        );
        assert!(error.contains("`broken`"), "{error}");

        let empty_id = dataset(root.path(), "empty", "a.wav,valve,,,,normal,x\n");
        let error = discover(&empty_id).expect_err("empty id").to_string();
        assert!(error.contains("field `machine_id`: empty"), "{error}");

        let nothing = root.path().join("nothing");
        std::fs::create_dir_all(&nothing).expect("mkdir");
        let error = discover(&nothing).expect_err("no manifest").to_string();
        assert!(error.contains("no manifest.csv"), "{error}");

        let no_column = root.path().join("nocol");
        std::fs::create_dir_all(&no_column).expect("mkdir");
        std::fs::write(no_column.join(MANIFEST), "path,label\na.wav,normal\n").expect("write");
        let error = discover(&no_column)
            .expect_err("missing column")
            .to_string();
        assert!(error.contains("missing column `machine_type`"), "{error}");
    }
}

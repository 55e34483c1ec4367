//! Embeds every `schemas/migrations/NNNN_name.sql` in the binary, in order, so that adding a
//! migration is adding a file.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let dir = Path::new("schemas/migrations");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("schemas/migrations exists")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    let mut out = String::from("pub static MIGRATIONS: &[(i32, &str, &str)] = &[\n");
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path.file_stem().unwrap().to_str().unwrap();
        let (number, _) = name
            .split_once('_')
            .unwrap_or_else(|| panic!("migration {name} is not NNNN_name.sql"));
        let number: i32 = number
            .parse()
            .unwrap_or_else(|_| panic!("migration {name} does not start with a number"));
        let abs = std::fs::canonicalize(path).unwrap();
        writeln!(
            out,
            "    ({number}, {name:?}, include_str!({:?})),",
            abs.display()
        )
        .unwrap();
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("migrations.rs");
    std::fs::write(dest, out).unwrap();
}

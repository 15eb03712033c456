//! Refuses, with one clear message, to build for an interpreter this extension does not support,
//! instead of failing later with an obscure compile or link error (PyPy, for example, has no
//! `PyObject_VectorcallMethod`). pip refuses CPython < 3.11 itself (requires-python); this catches
//! the rest: other implementations, and maturin pointed at an old CPython directly.

use pyo3_build_config::{PythonImplementation, PythonVersion};

const MINIMUM: PythonVersion = PythonVersion {
    major: 3,
    minor: 11,
};

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    // `cfg(Py_3_12)` and the like, as pyo3 itself has them (src/clock.rs uses one).
    pyo3_build_config::use_pyo3_cfgs();
    let config = pyo3_build_config::get();
    let (implementation, version) = (config.implementation(), config.version());
    if implementation != PythonImplementation::CPython {
        println!(
            "cargo::error=arroyo-metrics-buffer supports CPython only (>= {MINIMUM}), \
             not {implementation} {version}: build it with a CPython interpreter"
        );
    } else if version < MINIMUM {
        println!("cargo::error=arroyo-metrics-buffer needs CPython >= {MINIMUM}, not {version}");
    }
}

//! What each kernel file says to the Rust side, in one table per `.wgsl` file ([`Kernel`]): its
//! source, the layout of its uniform `Params`, and each entry point's storage bindings.
//!
//! [`crate::Batch`]'s dispatch takes its kernel from this table and checks the call against it
//! (the entry exists, as many tensors as the entry binds, the parameters' layout), and the test
//! below parses every composed variant of every kernel with naga and checks the WGSL against the
//! same table: the uniform struct's members, offsets and types, and each binding's index, name,
//! access and element type. A field or binding reordered on one side fails `cargo test`, without
//! a GPU, instead of giving wrong pixels.

use std::collections::BTreeMap;

use crate::pipeline::PipelineKey;
use crate::shader::ShaderVariant;

/// How an entry point uses a storage binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// `var<storage, read>`.
    Read,
    /// `var<storage, read_write>`.
    ReadWrite,
}

/// The element type of a storage binding's array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Element {
    F32,
    U32,
    /// `WEIGHT_STORE`: f32, f16 or u32 (packed f16 pairs) by [`ShaderVariant`].
    Weights,
}

/// One storage binding: `@binding(i + 1)` for the `i`-th entry of [`Kernel::bindings`].
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(test), allow(dead_code))] // what the WGSL must say: read by the descriptor test
pub(crate) struct Binding {
    pub name: &'static str,
    pub access: Access,
    pub element: Element,
}

impl Binding {
    pub(crate) const fn read(name: &'static str) -> Self {
        Self {
            name,
            access: Access::Read,
            element: Element::F32,
        }
    }

    pub(crate) const fn write(name: &'static str) -> Self {
        Self {
            name,
            access: Access::ReadWrite,
            element: Element::F32,
        }
    }

    pub(crate) const fn weights() -> Self {
        Self {
            name: "weights",
            access: Access::Read,
            element: Element::Weights,
        }
    }

    pub(crate) const fn ids(name: &'static str) -> Self {
        Self {
            name,
            access: Access::Read,
            element: Element::U32,
        }
    }
}

/// The bindings of the two GEMM kernels, linear and conv2d: input, weights, bias, output, and
/// the residual their epilogue may add.
pub(crate) const GEMM_BINDINGS: [Binding; 5] = [
    Binding::read("x"),
    Binding::weights(),
    Binding::read("bias"),
    Binding::write("y"),
    Binding::read("residual"),
];

/// A field of a uniform struct: its name, byte offset and Rust type, as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Field {
    pub name: &'static str,
    pub offset: usize,
    pub ty: &'static str,
}

/// The layout of a uniform struct: its fields in declaration order and its size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub fields: &'static [Field],
    pub size: usize,
}

/// A kernel's uniform parameters: a `#[repr(C)]` Pod struct whose layout is known by name.
/// Implemented by [`uniform!`].
pub(crate) trait Uniform: bytemuck::Pod {
    const LAYOUT: Layout;
}

/// Declares a kernel's uniform struct: `#[repr(C)]`, Pod, a size that is a multiple of 16 (the
/// uniform buffer rules), and its [`Uniform`] layout, which no field can be left out of.
/// Padding fields start with `_`; WGSL may spell them differently (`_pad0`, `_pad1`).
macro_rules! uniform {
    ($(#[$meta:meta])* struct $name:ident { $($field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
        struct $name {
            $($field: $ty,)*
        }
        const _: () = assert!(size_of::<$name>().is_multiple_of(16));
        impl $crate::kernel::Uniform for $name {
            const LAYOUT: $crate::kernel::Layout = $crate::kernel::Layout {
                fields: &[$(
                    $crate::kernel::Field {
                        name: stringify!($field),
                        offset: core::mem::offset_of!($name, $field),
                        ty: stringify!($ty),
                    },
                )*],
                size: size_of::<$name>(),
            };
        }
    };
}
pub(crate) use uniform;

/// One entry point and how many of the kernel's bindings it uses (the first `bindings`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub name: &'static str,
    pub bindings: usize,
}

/// One `.wgsl` file: `@binding(0)` is `var<uniform> p: Params`, then [`Kernel::bindings`].
#[derive(Debug)]
#[cfg_attr(not(test), allow(dead_code))] // `bindings` and `consts` are read by the descriptor test
pub(crate) struct Kernel {
    /// The file name, also the pipeline cache's key.
    pub file: &'static str,
    pub source: &'static str,
    /// The Rust side of `Params`.
    pub params: Layout,
    pub bindings: &'static [Binding],
    pub entries: &'static [Entry],
    /// Whether the kernel reads `weights` (composed once per weight variant).
    pub reads_weights: bool,
    /// Sets of `{{NAME}}` template constants it is composed with (checked with each); one empty
    /// set for kernels without placeholders.
    pub consts: fn() -> Vec<BTreeMap<&'static str, u32>>,
}

impl Kernel {
    /// The pipeline key of `entry` in `variant`, without template constants.
    pub(crate) fn key(&'static self, entry: &'static str, variant: ShaderVariant) -> PipelineKey {
        PipelineKey::new(self.file, entry, variant)
    }

    /// Checks a dispatch against the table: the entry exists, binds `tensors` tensors, reads
    /// weights in `variant` only if the kernel has them, and `P` has the declared layout. A
    /// mismatch is a bug in a launcher, reported as an error.
    pub(crate) fn check<P: Uniform>(
        &self,
        entry: &str,
        variant: ShaderVariant,
        tensors: usize,
    ) -> Result<(), String> {
        let Some(found) = self.entries.iter().find(|e| e.name == entry) else {
            return Err(format!("{} has no entry point {entry}", self.file));
        };
        if (variant != ShaderVariant::NoWeights) != self.reads_weights {
            return Err(format!(
                "{}::{entry} composed as {variant:?}, but it {} weights",
                self.file,
                if self.reads_weights {
                    "reads"
                } else {
                    "has no"
                }
            ));
        }
        if found.bindings != tensors {
            return Err(format!(
                "{}::{entry} binds {} tensors, the launcher passed {tensors}",
                self.file, found.bindings
            ));
        }
        if P::LAYOUT != self.params {
            return Err(format!(
                "{}::{entry}: the launcher's parameters are not the kernel's Params",
                self.file
            ));
        }
        Ok(())
    }
}

/// No template constants: the one empty set.
pub(crate) fn no_consts() -> Vec<BTreeMap<&'static str, u32>> {
    vec![BTreeMap::new()]
}

#[cfg(test)]
mod tests {
    use naga::valid::{Capabilities, GlobalUse, ValidationFlags, Validator};
    use naga::{AddressSpace, Module, Scalar, StorageAccess, TypeInner};

    use super::*;
    use crate::compose_shader;

    fn scalar(module: &Module, ty: naga::Handle<naga::Type>) -> Option<Scalar> {
        match module.types[ty].inner {
            TypeInner::Scalar(s) => Some(s),
            _ => None,
        }
    }

    fn element_scalar(element: Element, variant: ShaderVariant) -> Scalar {
        match (element, variant) {
            (Element::F32, _) | (Element::Weights, ShaderVariant::WeightsF32) => Scalar::F32,
            (Element::U32, _) | (Element::Weights, ShaderVariant::WeightsPacked) => Scalar::U32,
            (Element::Weights, ShaderVariant::WeightsF16) => Scalar::F16,
            (Element::Weights, ShaderVariant::NoWeights) => {
                panic!("a weights binding in a kernel composed without weights")
            }
        }
    }

    fn rust_scalar(ty: &str) -> Option<Scalar> {
        match ty {
            "u32" => Some(Scalar::U32),
            "f32" => Some(Scalar::F32),
            "i32" => Some(Scalar::I32),
            _ => None,
        }
    }

    /// Checks one composed module against `kernel`'s table.
    fn check_module(kernel: &Kernel, variant: ShaderVariant, label: &str, module: &Module) {
        let info = Validator::new(ValidationFlags::all(), Capabilities::all())
            .validate(module)
            .unwrap_or_else(|e| panic!("{label}: invalid module: {e:?}"));

        // The uniform `Params` at binding 0.
        let (uniform, _) = module
            .global_variables
            .iter()
            .find(|(_, g)| g.space == AddressSpace::Uniform)
            .unwrap_or_else(|| panic!("{label}: no uniform"));
        let uniform = &module.global_variables[uniform];
        let binding = uniform.binding.as_ref().expect("bound");
        assert_eq!((binding.group, binding.binding), (0, 0), "{label}: Params");
        let TypeInner::Struct { members, span } = &module.types[uniform.ty].inner else {
            panic!("{label}: the uniform is not a struct");
        };
        assert_eq!(
            *span as usize, kernel.params.size,
            "{label}: Params is {span} bytes in WGSL, {} in Rust",
            kernel.params.size
        );
        let wgsl: Vec<_> = members
            .iter()
            .filter(|m| !m.name.as_deref().unwrap_or("").starts_with('_'))
            .collect();
        let rust: Vec<_> = kernel
            .params
            .fields
            .iter()
            .filter(|f| !f.name.starts_with('_'))
            .collect();
        assert_eq!(
            wgsl.len(),
            rust.len(),
            "{label}: Params fields: WGSL {:?}, Rust {:?}",
            wgsl.iter().map(|m| &m.name).collect::<Vec<_>>(),
            rust.iter().map(|f| f.name).collect::<Vec<_>>()
        );
        for (m, f) in wgsl.iter().zip(&rust) {
            let name = m.name.as_deref().unwrap_or("");
            assert_eq!(
                (name, m.offset as usize),
                (f.name, f.offset),
                "{label}: Params field (name, offset), WGSL vs Rust"
            );
            assert_eq!(
                scalar(module, m.ty),
                rust_scalar(f.ty),
                "{label}: Params.{name}: WGSL type vs Rust {}",
                f.ty
            );
        }

        // The storage bindings 1.., as the table says.
        let mut storage: BTreeMap<u32, naga::Handle<naga::GlobalVariable>> = BTreeMap::new();
        for (handle, g) in module.global_variables.iter() {
            if let (AddressSpace::Storage { .. }, Some(b)) = (g.space, &g.binding) {
                assert_eq!(b.group, 0, "{label}: {:?} outside group 0", g.name);
                storage.insert(b.binding, handle);
            }
        }
        let bindings: Vec<u32> = storage.keys().copied().collect();
        let expected: Vec<u32> = (1..=kernel.bindings.len() as u32).collect();
        assert_eq!(bindings, expected, "{label}: storage binding indices");
        for (i, want) in kernel.bindings.iter().enumerate() {
            let g = &module.global_variables[storage[&(i as u32 + 1)]];
            assert_eq!(
                g.name.as_deref(),
                Some(want.name),
                "{label}: @binding({})",
                i + 1
            );
            let AddressSpace::Storage { access } = g.space else {
                unreachable!("filtered above")
            };
            let got = if access.contains(StorageAccess::STORE) {
                Access::ReadWrite
            } else {
                Access::Read
            };
            assert_eq!(got, want.access, "{label}: {}'s access", want.name);
            let TypeInner::Array { base, .. } = module.types[g.ty].inner else {
                panic!("{label}: {} is not an array", want.name);
            };
            assert_eq!(
                scalar(module, base),
                Some(element_scalar(want.element, variant)),
                "{label}: {}'s element type",
                want.name
            );
        }

        // Each entry point uses exactly `Params` and its first `bindings` storage bindings.
        let uniform_handle = module
            .global_variables
            .iter()
            .find(|(_, g)| g.space == AddressSpace::Uniform)
            .map(|(h, _)| h)
            .expect("found above");
        let names: Vec<&str> = module
            .entry_points
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        let mut want_names: Vec<&str> = kernel.entries.iter().map(|e| e.name).collect();
        let mut got_names = names.clone();
        want_names.sort_unstable();
        got_names.sort_unstable();
        assert_eq!(got_names, want_names, "{label}: entry points");
        let mut written = std::collections::BTreeSet::new();
        for (index, ep) in module.entry_points.iter().enumerate() {
            let entry = kernel
                .entries
                .iter()
                .find(|e| e.name == ep.name)
                .expect("compared above");
            let uses = info.get_entry_point(index);
            assert!(
                !uses[uniform_handle].is_empty(),
                "{label}::{}: Params unused",
                ep.name
            );
            for (i, want) in kernel.bindings.iter().enumerate() {
                let used = uses[storage[&(i as u32 + 1)]];
                let should = i < entry.bindings;
                assert_eq!(
                    !used.is_empty(),
                    should,
                    "{label}::{}: uses {} (binding {}): the launcher binds the first {}",
                    ep.name,
                    want.name,
                    i + 1,
                    entry.bindings
                );
                if used.contains(GlobalUse::WRITE) {
                    written.insert(want.name);
                }
            }
        }
        // A read_write binding is written by some entry point (group norm's `stats`: written by
        // the statistics pass, read by the apply pass); a read one never is (WGSL enforces).
        for want in kernel.bindings {
            assert_eq!(
                written.contains(want.name),
                want.access == Access::ReadWrite,
                "{label}: {} is {:?} but is {}written",
                want.name,
                want.access,
                if written.contains(want.name) {
                    ""
                } else {
                    "never "
                }
            );
        }
    }

    #[test]
    fn every_kernel_variant_matches_its_rust_table() {
        let mut checked = 0;
        for kernel in crate::ops::KERNELS {
            let variants: &[ShaderVariant] = if kernel.reads_weights {
                &[
                    ShaderVariant::WeightsF32,
                    ShaderVariant::WeightsF16,
                    ShaderVariant::WeightsPacked,
                ]
            } else {
                &[ShaderVariant::NoWeights]
            };
            for &variant in variants {
                for consts in (kernel.consts)() {
                    let label = format!("{} {variant:?} {consts:?}", kernel.file);
                    let code = compose_shader(kernel.source, variant, &consts)
                        .unwrap_or_else(|e| panic!("{label}: {e}"));
                    let module = naga::front::wgsl::parse_str(&code)
                        .unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(&code)));
                    check_module(kernel, variant, &label, &module);
                    checked += 1;
                }
            }
        }
        println!("{checked} composed modules checked");
        assert!(checked >= crate::ops::KERNELS.len());
    }

    /// Checks linear's table against its source changed by `edit`.
    fn check_edited_linear(label: &str, edit: impl Fn(&str) -> String) {
        let kernel = crate::ops::KERNELS
            .iter()
            .find(|k| k.file == "linear.wgsl")
            .expect("linear");
        let source = edit(kernel.source);
        assert_ne!(source, kernel.source, "{label}: the edit applied");
        let code =
            compose_shader(&source, ShaderVariant::WeightsF32, &BTreeMap::new()).expect("composed");
        let module = naga::front::wgsl::parse_str(&code).expect("parses");
        check_module(kernel, ShaderVariant::WeightsF32, label, &module);
    }

    /// The check sees a reordered field: `Params` of linear with two fields swapped in WGSL.
    #[test]
    #[should_panic(expected = "Params field (name, offset)")]
    fn a_reordered_uniform_field_is_caught() {
        check_edited_linear("linear (n and k swapped)", |source| {
            source
                .replacen("    n: u32,", "    SWAPPED", 1)
                .replacen("    k: u32,", "    n: u32,", 1)
                .replacen("    SWAPPED", "    k: u32,", 1)
        });
    }

    /// The check sees a binding whose access differs: linear's `bias` made read_write.
    #[test]
    #[should_panic(expected = "bias's access")]
    fn a_binding_with_another_access_is_caught() {
        check_edited_linear("linear (bias read_write)", |source| {
            source.replacen(
                "var<storage, read> bias",
                "var<storage, read_write> bias",
                1,
            )
        });
    }
}

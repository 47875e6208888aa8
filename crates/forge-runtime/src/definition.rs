//! What every registered function's definition shares, whichever registry holds it (jobs,
//! queries and mutations in `registry`, workflows in `workflow::def`): who may call it, its
//! arguments, and the macro that builds a registry from `inventory`.

/// Who may call a function through the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, signed in or not.
    Public,
    /// Any signed-in user (the default).
    Authenticated,
    /// A signed-in user with this role.
    Role(&'static str),
}

/// One parameter of a registered function.
#[derive(Debug, Clone, Copy)]
pub struct ArgDef {
    /// The name on the wire and in TypeScript (camelCase).
    pub name: &'static str,
    /// The name in the Rust source.
    pub rust_name: &'static str,
    /// The Rust type, as written.
    pub rust_type: &'static str,
}

macro_rules! function_registry {
    ($def:ty, $attr:literal, $by_name:ident, $one:ident, $all:ident) => {
        impl std::fmt::Debug for $def {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($def))
                    .field("name", &self.name)
                    .field("args", &self.args)
                    .field("output_type", &self.output_type)
                    .field("options", &self.options)
                    .finish_non_exhaustive()
            }
        }

        inventory::collect!($def);

        fn $by_name() -> &'static std::collections::BTreeMap<&'static str, &'static $def> {
            static DEFS: std::sync::OnceLock<
                std::collections::BTreeMap<&'static str, &'static $def>,
            > = std::sync::OnceLock::new();
            DEFS.get_or_init(|| {
                let mut map = std::collections::BTreeMap::new();
                for def in inventory::iter::<$def> {
                    if map.insert(def.name, def).is_some() {
                        panic!(
                            concat!("two ", $attr, " functions are named `{}`"),
                            def.name
                        );
                    }
                }
                map
            })
        }

        #[doc = concat!("The ", $attr, " registered under `name`.")]
        pub fn $one(name: &str) -> Option<&'static $def> {
            $by_name().get(name).copied()
        }

        #[doc = concat!("Every registered ", $attr, ", ordered by name.")]
        pub fn $all() -> impl Iterator<Item = &'static $def> {
            $by_name().values().copied()
        }
    };
}

pub(crate) use function_registry;

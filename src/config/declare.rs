//! The machinery behind the settings table (`table.rs`): one `declare_settings!` entry
//! generates the field, its default, its env and TOML readers, its checks, its line in the
//! redacted dump and its `Declaration` (what the docs test compares with the README).

use std::fmt;

use ipnet::IpNet;

use super::Secret;

/// Everything said about one setting, as data: validation messages, the dump and the README
/// check read it from here.
#[derive(Clone, Debug)]
pub struct Declaration {
    /// Path in `Settings`, e.g. `limits.user_rate_limit`.
    pub field: &'static str,
    pub env: &'static str,
    pub unit: &'static str,
    /// Inclusive bounds of a number.
    pub range: Option<(i128, i128)>,
    pub doc: &'static str,
    /// The default as the README's table writes it (without backticks).
    pub default: String,
}

impl Declaration {
    /// The contract's rule: the variable's name without `CHATGATE_`, lower-cased.
    pub fn toml_key(&self) -> String {
        toml_key(self.env)
    }
}

pub fn toml_key(env: &str) -> String {
    env.trim_start_matches("CHATGATE_").to_ascii_lowercase()
}

/// How one type of setting is read from text (env) and TOML, range-checked and shown.
pub trait SettingValue: Sized {
    fn from_text(raw: &str) -> Result<Self, String>;

    /// Strings in the file go through `from_text`, so both layers accept the same spellings.
    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::String(text) => Self::from_text(text),
            other => Err(format!("expected a string, found {}", other.type_str())),
        }
    }

    /// The value for range checks, for numbers.
    fn number(&self) -> Option<i128> {
        None
    }

    /// The form printed in the settings dump; secrets never appear in it.
    fn show(&self) -> String;
}

macro_rules! integer_setting {
    ($($t:ty),*) => {$(
        impl SettingValue for $t {
            fn from_text(raw: &str) -> Result<Self, String> {
                raw.trim().parse::<$t>().map_err(|_| {
                    format!(
                        "`{raw}` is not a whole number from {} to {}; set it to plain digits, or \
                         unset it to use the default",
                        <$t>::MIN,
                        <$t>::MAX
                    )
                })
            }

            fn from_toml(value: &toml::Value) -> Result<Self, String> {
                let expected = format!("a whole number from {} to {}", <$t>::MIN, <$t>::MAX);
                match value {
                    toml::Value::Integer(n) => {
                        <$t>::try_from(*n).map_err(|_| format!("{n} is out of range, expected {expected}"))
                    }
                    other => Err(format!(
                        "invalid type: {}, expected {expected}",
                        other.type_str()
                    )),
                }
            }

            fn number(&self) -> Option<i128> {
                i128::try_from(*self).ok()
            }

            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
integer_setting!(u32, u64, usize, i64);

impl SettingValue for String {
    fn from_text(raw: &str) -> Result<Self, String> {
        Ok(raw.to_string())
    }

    fn show(&self) -> String {
        self.clone()
    }
}

impl SettingValue for Secret {
    fn from_text(raw: &str) -> Result<Self, String> {
        Ok(Secret::new(raw.to_string()))
    }

    fn show(&self) -> String {
        self.to_string()
    }
}

/// Unset (`None`) shows as nothing: `KEY=` in the dump, "empty" in the README.
impl<T: SettingValue> SettingValue for Option<T> {
    fn from_text(raw: &str) -> Result<Self, String> {
        T::from_text(raw).map(Some)
    }

    fn from_toml(value: &toml::Value) -> Result<Self, String> {
        T::from_toml(value).map(Some)
    }

    fn show(&self) -> String {
        self.as_ref().map(T::show).unwrap_or_default()
    }
}

/// A comma list; blanks between commas are skipped.
impl SettingValue for Vec<String> {
    fn from_text(raw: &str) -> Result<Self, String> {
        Ok(split_list(raw).map(str::to_string).collect())
    }

    fn show(&self) -> String {
        self.join(",")
    }
}

/// A comma list of IP addresses and CIDR blocks; an address is a block of one. Every bad
/// entry is named in one message.
impl SettingValue for Vec<IpNet> {
    fn from_text(raw: &str) -> Result<Self, String> {
        let (mut nets, mut bad) = (Vec::new(), Vec::new());
        for entry in split_list(raw) {
            match entry.parse::<IpNet>() {
                Ok(net) => nets.push(net),
                Err(_) => match entry.parse::<std::net::IpAddr>() {
                    Ok(addr) => nets.push(IpNet::from(addr)),
                    Err(_) => bad.push(format!("`{entry}`")),
                },
            }
        }
        if bad.is_empty() {
            Ok(nets)
        } else {
            Err(format!(
                "{} is not an IP address or CIDR block; write addresses or blocks separated by \
                 commas, e.g. 10.0.0.5, 10.1.0.0/16, fd00::/8",
                bad.join(", ")
            ))
        }
    }

    fn show(&self) -> String {
        self.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn split_list(raw: &str) -> impl Iterator<Item = &str> {
    raw.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// Shows a setting in `Debug` output through its dump form, so `{settings:?}` is as safe to log
/// as the dump.
pub struct Shown(pub String);

impl fmt::Debug for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `$given` when the declaration has it, else `$fallback`.
macro_rules! given_or {
    (; $fallback:expr) => {
        $fallback
    };
    ($given:expr; $fallback:expr) => {
        $given
    };
}

/// One section per `Settings` field; per setting: its doc line, field, type and default, then
/// `env`, `unit`, and optionally `range LO => HI` (inclusive), `check FN` (a shape check:
/// `fn(&T, dev) -> Vec<message>`), `show FN` (dump form, e.g. URL redaction) and `readme "…"`
/// (the default as the README words it, when it is not the value itself).
macro_rules! declare_settings {
    ($(
        $(#[doc = $section_doc:literal])*
        $section:ident: $Section:ident {$(
            #[doc = $doc:literal]
            $field:ident: $ty:ty = $default:expr;
                env $env:literal, unit $unit:literal
                $(, range $lo:expr => $hi:expr)?
                $(, check $check:path)?
                $(, show $show:path)?
                $(, readme $readme:literal)?;
        )*}
    )*) => {
        $(
            $(#[doc = $section_doc])*
            #[derive(Clone)]
            pub struct $Section {$(
                #[doc = $doc]
                pub $field: $ty,
            )*}

            impl Default for $Section {
                fn default() -> Self {
                    Self { $($field: $default,)* }
                }
            }

            impl std::fmt::Debug for $Section {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.debug_struct(stringify!($Section))
                        $(.field(stringify!($field), &$crate::config::declare::Shown(
                            given_or!($($show(&self.$field))?; SettingValue::show(&self.$field))
                        )))*
                        .finish()
                }
            }
        )*

        /// Every declared setting. `models` (an array of tables) and `rust_log` (file only:
        /// `RUST_LOG` belongs to env_logger) are the TOML file's two other keys.
        #[derive(Clone, Debug)]
        pub struct Settings {
            $(pub $section: $Section,)*
            pub models: Vec<ModelSettings>,
            pub log_filter: Option<String>,
        }

        impl Settings {
            /// Defaults only (database url "chatgate.db", no secret, one echo model).
            pub fn defaults() -> Settings {
                Settings {
                    $($section: $Section::default(),)*
                    models: vec![ModelSettings::echo()],
                    log_filter: None,
                }
            }

            /// Every declaration, in table order.
            pub fn declarations() -> Vec<Declaration> {
                vec![$($(Declaration {
                    field: concat!(stringify!($section), ".", stringify!($field)),
                    env: $env,
                    unit: $unit,
                    range: given_or!($(Some(($lo as i128, $hi as i128)))?; None),
                    doc: $doc.trim(),
                    default: given_or!(
                        $($readme.to_string())?;
                        readme_default(&SettingValue::show(&{ let value: $ty = $default; value }))
                    ),
                },)*)*]
            }

            /// `(variable, value)` for every setting, secrets and URL passwords redacted.
            pub fn dump(&self) -> Vec<(&'static str, String)> {
                vec![$($(
                    ($env, given_or!($($show(&self.$section.$field))?; SettingValue::show(&self.$section.$field))),
                )*)*]
            }

            /// Applies every set variable; a bad value keeps the earlier layer's value and is
            /// reported under its variable.
            pub(super) fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>, problems: &mut Vec<ConfigProblem>) {
                $($(
                    if let Some(raw) = env_value(env, $env) {
                        match <$ty as SettingValue>::from_text(&raw) {
                            Ok(value) => self.$section.$field = value,
                            Err(message) => problems.push(ConfigProblem::new($env, message)),
                        }
                    }
                )*)*
            }

            /// `None` for a key that is not declared; `Some(Err)` for a value of the wrong form.
            pub(super) fn apply_toml_key(&mut self, key: &str, value: &toml::Value) -> Option<Result<(), (&'static str, String)>> {
                $($(
                    if key == toml_key($env) {
                        return Some(match <$ty as SettingValue>::from_toml(value) {
                            Ok(parsed) => { self.$section.$field = parsed; Ok(()) }
                            Err(message) => Err(($env, message)),
                        });
                    }
                )*)*
                None
            }

            /// Shape checks first (in table order), then every range: a reader fixing the
            /// file top-down meets them in that order.
            pub(super) fn check_declared(&self, dev: bool, problems: &mut Vec<ConfigProblem>) {
                $($($(
                    for message in $check(&self.$section.$field, dev) {
                        problems.push(ConfigProblem::new($env, message));
                    }
                )?)*)*
                let defaults = Settings::defaults();
                $($($(
                    check_range(
                        $env,
                        SettingValue::number(&self.$section.$field),
                        SettingValue::number(&defaults.$section.$field),
                        ($lo as i128, $hi as i128),
                        problems,
                    );
                )?)*)*
            }
        }
    };
}

/// The README writes an unset default as "empty".
pub fn readme_default(shown: &str) -> String {
    if shown.is_empty() {
        "empty".to_string()
    } else {
        shown.to_string()
    }
}

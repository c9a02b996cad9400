//! The closed vocabularies of a frame: its lens shape and its material.
//!
//! Stored by their lower-case names (`"cat_eye"`, `"tr90"`), as the seed
//! spec stores them; a stored name this build does not know reads as
//! `Unspecified` rather than failing the whole product (an older or newer
//! writer may know more shapes). Each value also has a stable `code`, equal
//! to its number in the API's enum (`discovery.v1.FrameShape`...), so the
//! snapshot's byte columns and the filter's bit masks use the same numbers
//! as a request (a test pins the two together in `convert`).

use serde::{Deserialize, Serialize};

/// One closed vocabulary: variants with their stored names and codes.
macro_rules! vocabulary {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $code:literal, $text:literal;)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize)]
        pub enum $name {
            /// Not known (also what an unknown stored name reads as).
            #[default]
            #[serde(rename = "unspecified")]
            Unspecified,
            $($(#[$vdoc])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// Every known value (not `Unspecified`), in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored, lower-case name (`"unspecified"` for none).
            pub fn name(self) -> &'static str {
                match self {
                    $name::Unspecified => "unspecified",
                    $($name::$variant => $text,)+
                }
            }

            /// Parses a name, case-insensitively; `None` when it is not a
            /// known value (`"unspecified"` included).
            ///
            /// A linear scan over at most a dozen names: cheaper than a map
            /// at this size.
            pub fn parse(s: &str) -> Option<Self> {
                let s = s.trim();
                Self::ALL.iter().copied().find(|v| v.name().eq_ignore_ascii_case(s))
            }

            /// The stable number (the API enum's; 0 for `Unspecified`).
            pub fn code(self) -> u8 {
                match self {
                    $name::Unspecified => 0,
                    $($name::$variant => $code,)+
                }
            }

            /// The value with this code, if any (0 is `Unspecified`).
            pub fn from_code(code: i32) -> Option<Self> {
                if code == 0 {
                    return Some($name::Unspecified);
                }
                Self::ALL.iter().copied().find(|v| i32::from(v.code()) == code)
            }
        }

        /// Read by name, case-insensitively (feeds send "Round"); a name
        /// this build does not know reads as `Unspecified`, which intake
        /// validation refuses and a reader shows as unknown.
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Ok(Self::parse(&s).unwrap_or_default())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

vocabulary! {
    /// A frame's lens shape.
    Shape {
        /// Circular lenses.
        Round = 1, "round";
        /// Rectangular lenses, wider than tall.
        Rectangle = 2, "rectangle";
        /// Square lenses.
        Square = 3, "square";
        /// Teardrop pilot lenses.
        Aviator = 4, "aviator";
        /// Upswept outer corners.
        CatEye = 5, "cat_eye";
        /// Trapezoidal acetate classic.
        Wayfarer = 6, "wayfarer";
        /// Heavy upper rim.
        Browline = 7, "browline";
        /// Oval lenses.
        Oval = 8, "oval";
        /// Hexagonal, octagonal and other angular lenses.
        Geometric = 9, "geometric";
        /// One-piece wrap lens.
        Shield = 10, "shield";
    }
}

vocabulary! {
    /// A frame's material.
    Material {
        /// Cellulose acetate.
        Acetate = 1, "acetate";
        /// Stainless steel or other metal alloys.
        Metal = 2, "metal";
        /// Titanium or beta-titanium.
        Titanium = 3, "titanium";
        /// Injected nylon / TR-90 and similar plastics.
        Tr90 = 4, "tr90";
        /// Wood or bamboo.
        Wood = 5, "wood";
        /// Metal and acetate combined.
        Mixed = 6, "mixed";
    }
}

impl Shape {
    /// The name as a shopper reads it ("cat-eye").
    pub fn title(self) -> String {
        self.name().replace('_', "-")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_round_trip() {
        for s in Shape::ALL {
            assert_eq!(Shape::parse(s.name()), Some(*s));
            assert_eq!(Shape::from_code(i32::from(s.code())), Some(*s));
        }
        for m in Material::ALL {
            assert_eq!(Material::parse(&m.name().to_uppercase()), Some(*m));
            assert_eq!(Material::from_code(i32::from(m.code())), Some(*m));
        }
        assert_eq!(Shape::parse("unspecified"), None);
        assert_eq!(Shape::parse("hexagon"), None);
        assert_eq!(Shape::from_code(11), None);
        assert_eq!(Material::from_code(-1), None);
    }

    #[test]
    fn stored_as_lower_case_names_and_unknown_names_read_as_unspecified() {
        use discovery_kit::store::{bson, doc};
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Doc {
            shape: Shape,
            material: Material,
        }
        let d = Doc {
            shape: Shape::CatEye,
            material: Material::Tr90,
        };
        let stored = bson::to_document(&d).unwrap();
        assert_eq!(stored, doc! {"shape": "cat_eye", "material": "tr90"});
        assert_eq!(bson::from_document::<Doc>(stored).unwrap(), d);
        let upper: Doc =
            bson::from_document(doc! {"shape": "Cat_Eye", "material": "TR90"}).unwrap();
        assert_eq!(upper, d, "names are read case-insensitively");
        let odd: Doc = bson::from_document(doc! {"shape": "hexagon", "material": "gold"}).unwrap();
        assert_eq!(
            odd,
            Doc {
                shape: Shape::Unspecified,
                material: Material::Unspecified
            }
        );
        assert!(
            bson::from_document::<Doc>(doc! {"shape": 3, "material": "metal"}).is_err(),
            "a number is not a name"
        );
    }
}

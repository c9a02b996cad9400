//! A conversational turn: what the shopper means by an utterance, given the
//! conversation so far, and the short reply that goes with the results.
//!
//! **Intent** by nearest neighbours over labelled example utterances
//! ([`EXAMPLES`], embedded once with the search's model: the three most
//! similar vote, weighted by similarity), then slot rules that decide
//! outright where words are unambiguous ("compare", "vs" with two frames
//! named is a comparison; "fit" about a named frame is a fit question), and
//! that fall back on the state (nothing to refine yet: a new search). Without
//! the model the rules alone decide.
//!
//! **Refinement** rewrites the current query's text, so everything search
//! understands keeps working and the chips show the whole query: the parts
//! of the kinds the utterance changes are cut out of the query (their spans
//! from `understand`) and the utterance's own parts appended: "in black"
//! replaces the colour, "cheaper" the price (at most 80 % of the median
//! price last shown), "bigger"/"smaller" the size.
//!
//! **References** to frames shown ("the second one", "1 and 3", "these
//! two", "it") are positions in the last results.
//!
//! Replies are templates over the frames' attributes: no text generation,
//! nothing a shopper could be told that the catalogue does not say.

use discovery_catalog::Frame;
use discovery_embed::{EmbedError, Embedder, dot};

use crate::understand::{ChipKind, Lexicon, understand};

/// Longest utterance accepted, bytes.
pub const MAX_UTTERANCE: usize = 512;
/// Longest query a conversation keeps, bytes (older parts are dropped).
pub const MAX_QUERY: usize = 256;
/// Frames a turn shows.
pub const SHOWN: usize = 8;

/// What a turn asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// A new search ("round glasses for a wedding").
    NewSearch,
    /// A change to the current one ("cheaper", "in black", "bigger").
    Refine,
    /// Two shown frames side by side.
    Compare,
    /// Whether a shown frame fits the shopper's face.
    AskFit,
}

/// Labelled example utterances the intent is recognised by.
pub const EXAMPLES: &[(&str, Intent)] = &[
    ("show me round glasses", Intent::NewSearch),
    (
        "I am looking for sunglasses for the beach",
        Intent::NewSearch,
    ),
    ("something bold for a wedding", Intent::NewSearch),
    ("lightweight titanium frames for work", Intent::NewSearch),
    ("do you have cat eye frames", Intent::NewSearch),
    ("find me aviators under 200 dollars", Intent::NewSearch),
    ("I need reading glasses", Intent::NewSearch),
    ("what do you have from ray-ban", Intent::NewSearch),
    (
        "let's look at something else: sporty wraparounds",
        Intent::NewSearch,
    ),
    ("start over with vintage frames", Intent::NewSearch),
    ("show me cheaper ones", Intent::Refine),
    ("something less expensive", Intent::Refine),
    ("in black", Intent::Refine),
    ("do you have these in tortoise", Intent::Refine),
    ("bigger please", Intent::Refine),
    ("a bit smaller", Intent::Refine),
    ("only metal ones", Intent::Refine),
    ("not from that brand", Intent::Refine),
    ("without the red ones", Intent::Refine),
    ("more expensive options", Intent::Refine),
    ("only the ones in stock", Intent::Refine),
    ("lighter ones", Intent::Refine),
    ("compare the first two", Intent::Compare),
    (
        "what is the difference between the second and the third",
        Intent::Compare,
    ),
    ("number 1 vs number 4", Intent::Compare),
    ("which is better, the first or the last", Intent::Compare),
    ("compare these two", Intent::Compare),
    ("how do the first and second one differ", Intent::Compare),
    ("will the second one fit my face", Intent::AskFit),
    ("does it fit me", Intent::AskFit),
    ("is the first one too wide for me", Intent::AskFit),
    ("what size is the third one", Intent::AskFit),
    ("would these suit a narrow face", Intent::AskFit),
    ("is number 2 big enough for my face", Intent::AskFit),
];

/// The examples' embeddings.
#[derive(Debug, Default)]
pub struct Examples {
    vectors: Vec<(Vec<f32>, Intent)>,
}

impl Examples {
    /// Embeds [`EXAMPLES`] with `e`.
    pub fn embed(e: &Embedder) -> Result<Self, EmbedError> {
        let texts: Vec<&str> = EXAMPLES.iter().map(|(t, _)| *t).collect();
        let vectors = e
            .embed_batch(&texts)?
            .into_iter()
            .zip(EXAMPLES.iter().map(|(_, i)| *i))
            .collect();
        Ok(Self { vectors })
    }

    /// The intent the nearest examples vote for, and its share of the vote
    /// (a confidence in [0, 1]); `None` without examples.
    pub fn nearest(&self, v: &[f32]) -> Option<(Intent, f32)> {
        let mut scored: Vec<(f32, Intent)> =
            self.vectors.iter().map(|(e, i)| (dot(e, v), *i)).collect();
        scored.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        let top = &scored[..scored.len().min(3)];
        let mut votes: Vec<(Intent, f32)> = Vec::new();
        for &(s, i) in top {
            match votes.iter_mut().find(|(j, _)| *j == i) {
                Some(v) => v.1 += s.max(0.0),
                None => votes.push((i, s.max(0.0))),
            }
        }
        let total: f32 = votes.iter().map(|v| v.1).sum();
        votes
            .into_iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, s)| (i, if total > 0.0 { s / total } else { 0.0 }))
    }
}

/// Words of an utterance, lower case.
fn words(text: &str) -> Vec<String> {
    crate::search::query_words(text)
}

const ORDINALS: &[(&str, usize)] = &[
    ("first", 0),
    ("1st", 0),
    ("second", 1),
    ("2nd", 1),
    ("third", 2),
    ("3rd", 2),
    ("fourth", 3),
    ("4th", 3),
    ("fifth", 4),
    ("5th", 4),
    ("sixth", 5),
    ("6th", 5),
    ("seventh", 6),
    ("7th", 6),
    ("eighth", 7),
    ("8th", 7),
];

/// Positions in the last results an utterance names, in order ("the
/// second and the last" with 8 shown: [1, 7]; "these two": [0, 1]; "it":
/// [0]); none when it names none.
pub fn references(text: &str, shown: usize) -> Vec<usize> {
    let w = words(text);
    let mut out: Vec<usize> = Vec::new();
    let push = |out: &mut Vec<usize>, i: usize| {
        if i < shown && !out.contains(&i) {
            out.push(i);
        }
    };
    for (k, word) in w.iter().enumerate() {
        if let Some((_, i)) = ORDINALS.iter().find(|(o, _)| o == word) {
            push(&mut out, *i);
        } else if word == "last" {
            push(&mut out, shown.saturating_sub(1));
        } else if let Ok(n) = word.parse::<usize>() {
            // "1 and 3", "number 2", "#4": a small number is a position.
            let after_price =
                k > 0 && ["under", "over", "below", "above"].contains(&w[k - 1].as_str());
            if (1..=shown).contains(&n) && !after_price {
                push(&mut out, n - 1);
            }
        }
    }
    if out.is_empty() {
        let has = |s: &str| w.iter().any(|x| x == s);
        if has("both") || (has("these") && has("two")) || (has("those") && has("two")) {
            push(&mut out, 0);
            push(&mut out, 1);
        } else if has("it") || has("this") || has("that") {
            push(&mut out, 0);
        }
    }
    out
}

/// The intent of `text` in a conversation whose current query is `query`
/// (empty: none yet), with `shown` frames on screen: slot rules first,
/// then the examples' vote (`voted`), then the state.
pub fn intent(
    text: &str,
    query: &str,
    shown: usize,
    voted: Option<(Intent, f32)>,
) -> (Intent, f32) {
    let w = words(text);
    let has = |s: &str| w.iter().any(|x| x == s);
    let refs = references(text, shown).len();
    if (has("compare") || has("vs") || has("versus") || has("difference") || has("differ"))
        && refs >= 2
    {
        return (Intent::Compare, 1.0);
    }
    if (has("fit") || has("fits") || has("suit") || has("size")) && refs >= 1 {
        return (Intent::AskFit, 1.0);
    }
    let (intent, confidence) = voted.unwrap_or((Intent::NewSearch, 0.0));
    match intent {
        // Nothing shown to compare or ask about: look for it instead.
        Intent::Compare | Intent::AskFit if shown == 0 => (Intent::NewSearch, confidence),
        Intent::Compare if refs < 2 => (Intent::Refine, confidence),
        // Nothing to refine yet.
        Intent::Refine if query.is_empty() => (Intent::NewSearch, confidence),
        i => (i, confidence),
    }
}

/// The query after a refining utterance: the parts of the kinds the
/// utterance changes cut out of `query`, the utterance's parts appended.
/// `median_price` (major units) and `currency` are the last results' (for
/// "cheaper" and "more expensive").
pub fn refine(
    lex: &Lexicon,
    query: &str,
    text: &str,
    median_price: Option<f64>,
    currency: &str,
) -> String {
    let w = words(text);
    let has = |s: &str| w.iter().any(|x| x == s);
    let mut replace: Vec<ChipKind> = Vec::new();
    let mut add: Vec<String> = Vec::new();
    let cheaper = has("cheaper") || (has("less") && has("expensive")) || has("lower");
    let dearer = has("pricier") || (has("more") && has("expensive")) || has("premium");
    let priced = median_price.is_some_and(|m| m > 0.0) && (cheaper || dearer);
    let said = understand(lex, text);
    for c in &said.chips {
        // "cheaper" becomes a bound below what was shown, not a lean.
        if priced && c.kind == ChipKind::PriceLean {
            continue;
        }
        if !replace.contains(&c.kind) {
            replace.push(c.kind);
        }
        add.push(text[c.start..c.end].to_string());
    }
    if let Some(m) = median_price.filter(|_| priced) {
        replace.push(ChipKind::PriceLean);
        if cheaper {
            replace.push(ChipKind::Price);
            add.push(format!("under {:.0} {currency}", (m * 0.8).floor()));
        } else if dearer {
            replace.push(ChipKind::Price);
            add.push(format!("over {:.0} {currency}", (m * 1.2).ceil()));
        }
    }
    let sized = said.chips.iter().any(|c| c.kind == ChipKind::Size);
    if sized {
        // Understood already ("bigger" is a size word): it replaces the size.
    } else if has("bigger") || has("larger") || has("wider") {
        replace.push(ChipKind::Size);
        add.push("wide".into());
    } else if has("smaller") || has("narrower") {
        replace.push(ChipKind::Size);
        add.push("narrow".into());
    }
    if has("lighter") || has("lightweight") {
        add.push("lightweight".into());
    }
    // Cut the replaced parts out of the current query.
    let current = understand(lex, query);
    let mut kept = String::with_capacity(query.len());
    let mut at = 0;
    for c in current.chips.iter().filter(|c| replace.contains(&c.kind)) {
        kept.push_str(&query[at..c.start]);
        at = c.end;
    }
    kept.push_str(&query[at..]);
    let mut out = kept.split_whitespace().collect::<Vec<_>>().join(" ");
    for a in add {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&a);
    }
    // Keep the newest parts when it grows past the bound.
    while out.len() > MAX_QUERY {
        match out.find(' ') {
            Some(i) => out = out[i + 1..].to_string(),
            None => out.truncate(0),
        }
    }
    out
}

/// A frame's price as a shopper reads it.
fn price(f: &Frame) -> String {
    format!("{:.2} {}", f.price, f.currency)
}

/// The reply to a search or a refinement.
pub fn reply_results(total: usize, top: Option<&Frame>, understood: &[String]) -> String {
    let what = if understood.is_empty() {
        String::new()
    } else {
        format!(" ({})", understood.join(", "))
    };
    match top {
        None => format!(
            "I found nothing{what}. Try fewer conditions, or tell me what the frames are for."
        ),
        Some(f) => format!(
            "I found {total} frame{}{what}. The closest is the {} by {} at {}.",
            if total == 1 { "" } else { "s" },
            f.name,
            f.brand,
            price(f)
        ),
    }
}

/// The reply comparing two frames.
pub fn reply_compare(a: &Frame, b: &Frame) -> String {
    let describe = |f: &Frame| {
        format!(
            "the {} by {} ({}, {} {}, {:.0} mm wide)",
            f.name,
            f.brand,
            price(f),
            f.shape.title(),
            f.material.name(),
            f.total_width_mm
        )
    };
    let mut out = format!("{} and {}.", capitalise(&describe(a)), describe(b));
    let (cheap, dear) = if a.price <= b.price { (a, b) } else { (b, a) };
    if (dear.price - cheap.price).abs() >= 0.01 {
        out.push_str(&format!(
            " The {} is {:.2} {} cheaper.",
            cheap.name,
            dear.price - cheap.price,
            cheap.currency
        ));
    } else {
        out.push_str(" They cost the same.");
    }
    let (narrow, wide) = if a.total_width_mm <= b.total_width_mm {
        (a, b)
    } else {
        (b, a)
    };
    let d = wide.total_width_mm - narrow.total_width_mm;
    if d >= 1.0 {
        out.push_str(&format!(" The {} is {d:.0} mm wider.", wide.name));
    }
    out
}

/// How a frame of `width` fits a face of `face` (mm): the ranking's fit
/// bands (a frame about as wide as the face, ±4 mm, fits well).
pub fn reply_fit(f: &Frame, face: Option<f32>) -> String {
    let w = f.total_width_mm;
    match face.filter(|x| *x > 0.0) {
        None => format!(
            "The {} is {w:.0} mm wide. Analyse a photo (or tell me your face width) and I can say whether it fits you.",
            f.name
        ),
        Some(face) => {
            let d = w - face;
            let verdict = match d {
                d if d.abs() <= 4.0 => "a good fit",
                d if d < -8.0 => "too narrow",
                d if d < 0.0 => "a little narrow",
                d if d > 8.0 => "too wide",
                _ => "a little wide",
            };
            format!(
                "The {} is {w:.0} mm wide; for your {face:.0} mm face that is {verdict} ({d:+.0} mm).",
                f.name
            )
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex() -> Lexicon {
        Lexicon::new(
            ["Ray-Ban", "Oakley"],
            ["Black", "Tortoise", "Red"],
            Some("USD"),
        )
    }

    #[test]
    fn references_name_positions_in_what_was_shown() {
        assert_eq!(references("compare the first two", 8), vec![0]);
        assert_eq!(references("the second and the last", 8), vec![1, 7]);
        assert_eq!(references("1 vs 3", 8), vec![0, 2]);
        assert_eq!(references("compare these two", 8), vec![0, 1]);
        assert_eq!(references("does it fit", 8), vec![0]);
        assert_eq!(references("under 150", 8), Vec::<usize>::new());
        assert_eq!(references("number 9", 8), Vec::<usize>::new());
        assert_eq!(references("the third", 2), Vec::<usize>::new());
    }

    #[test]
    fn rules_decide_where_words_are_unambiguous_and_the_state_where_not() {
        let voted = Some((Intent::Refine, 0.6));
        assert_eq!(
            intent("compare 1 and 2", "round", 8, voted).0,
            Intent::Compare
        );
        assert_eq!(
            intent("will the second fit me", "round", 8, voted).0,
            Intent::AskFit
        );
        assert_eq!(intent("cheaper", "", 0, voted).0, Intent::NewSearch);
        assert_eq!(intent("cheaper", "round", 8, voted).0, Intent::Refine);
        assert_eq!(
            intent("compare them", "round", 0, Some((Intent::Compare, 0.9))).0,
            Intent::NewSearch
        );
    }

    #[test]
    fn refining_replaces_the_kinds_it_names_and_keeps_the_rest() {
        let l = lex();
        assert_eq!(
            refine(
                &l,
                "round glasses in red under $200",
                "in black",
                None,
                "USD"
            ),
            "round glasses in under $200 black"
        );
        assert_eq!(
            refine(
                &l,
                "round glasses under $200",
                "cheaper",
                Some(150.0),
                "USD"
            ),
            "round glasses under 120 USD"
        );
        assert_eq!(
            refine(&l, "aviators narrow", "bigger", None, "USD"),
            "aviators bigger"
        );
        let long = "word ".repeat(80);
        assert!(refine(&l, &long, "in black", None, "USD").len() <= MAX_QUERY);
    }

    #[test]
    fn replies_say_what_the_catalogue_says() {
        let frames = discovery_catalog::demo_catalog(2);
        let (a, b) = (&frames[0], &frames[1]);
        let c = reply_compare(a, b);
        assert!(c.contains(&a.name) && c.contains(&b.name), "{c}");
        let fit = reply_fit(a, Some(a.total_width_mm + 2.0));
        assert!(fit.contains("a good fit"), "{fit}");
        assert!(reply_fit(a, None).contains("Analyse a photo"));
        assert!(reply_results(0, None, &[]).starts_with("I found nothing"));
    }
}

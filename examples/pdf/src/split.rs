//! `split`: one single-page PDF per selected page, as `pdfseparate` writes them.
//!
//! Each page file holds the page and only the objects it reaches (its contents, resources,
//! fonts, images, annotations), never the rest of the document: references to other pages
//! (links, article threads) become null, inherited attributes (resources, boxes, rotation)
//! are copied onto the page. An encrypted input that opens with an empty user password gives
//! unencrypted pages (the objects are read decrypted), as pdfseparate's do.

use crate::pages::PageSelection;
use crate::Failure;
use lopdf::{Dictionary, Document, Object, ObjectId};
use std::collections::{BTreeMap, BTreeSet};

/// Page attributes a page may inherit from its ancestors in the page tree.
const INHERITED: [&[u8]; 4] = [b"Resources", b"MediaBox", b"CropBox", b"Rotate"];

pub fn split_pages(
    data: &[u8],
    selection: &PageSelection,
    mut emit: impl FnMut(usize, &[u8]) -> Result<(), Failure>,
) -> Result<usize, Failure> {
    // hayro judges the file first, so that every operation names the same reason for it.
    crate::open(data.to_vec())?;
    let document = Document::load_mem(data).map_err(|_| Failure::Damaged)?;
    if document.is_encrypted() {
        return Err(Failure::NeedsPassword);
    }
    let pages: Vec<ObjectId> = document.get_pages().into_values().collect();
    let every_page: BTreeSet<ObjectId> = pages.iter().copied().chain(page_tree_nodes(&document)).collect();
    let indexes = selection.indexes(pages.len());
    for &index in &indexes {
        let single = single_page(&document, pages[index], &every_page).ok_or(Failure::Damaged)?;
        emit(index + 1, &single)?;
    }
    Ok(indexes.len())
}

/// The ids of the page tree's inner nodes (`/Type /Pages`), which no page file may carry.
fn page_tree_nodes(document: &Document) -> Vec<ObjectId> {
    document
        .objects
        .iter()
        .filter(|(_, object)| {
            object.as_dict().is_ok_and(|dict| dict.get(b"Type").and_then(Object::as_name).is_ok_and(|n| n == b"Pages"))
        })
        .map(|(id, _)| *id)
        .collect()
}

fn single_page(document: &Document, page_id: ObjectId, every_page: &BTreeSet<ObjectId>) -> Option<Vec<u8>> {
    let mut page = document.get_dictionary(page_id).ok()?.clone();
    for key in INHERITED {
        if page.has(key) {
            continue;
        }
        if let Some(value) = inherited(document, &page, key) {
            page.set(key, value);
        }
    }
    page.remove(b"Parent");

    let mut objects: BTreeMap<ObjectId, Object> = BTreeMap::new();
    let mut pending: Vec<ObjectId> = Vec::new();
    let mut page_object = Object::Dictionary(page);
    cut_references(&mut page_object, page_id, every_page, &mut pending);
    while let Some(id) = pending.pop() {
        if objects.contains_key(&id) || id == page_id {
            continue;
        }
        let Ok(object) = document.get_object(id) else {
            continue;
        };
        let mut object = object.clone();
        cut_references(&mut object, page_id, every_page, &mut pending);
        objects.insert(id, object);
    }

    let mut single = Document::with_version(document.version.clone());
    single.objects = objects;
    single.max_id = single.objects.keys().map(|id| id.0).max().unwrap_or(0).max(page_id.0);
    let pages_id = single.new_object_id();
    if let Object::Dictionary(page) = &mut page_object {
        page.set("Parent", Object::Reference(pages_id));
    }
    single.objects.insert(page_id, page_object);
    let mut pages = Dictionary::new();
    pages.set("Type", Object::Name(b"Pages".to_vec()));
    pages.set("Kids", Object::Array(vec![Object::Reference(page_id)]));
    pages.set("Count", Object::Integer(1));
    single.objects.insert(pages_id, Object::Dictionary(pages));
    let mut catalog = Dictionary::new();
    catalog.set("Type", Object::Name(b"Catalog".to_vec()));
    catalog.set("Pages", Object::Reference(pages_id));
    let catalog_id = single.add_object(Object::Dictionary(catalog));
    single.trailer.set("Root", Object::Reference(catalog_id));
    single.renumber_objects();
    let mut bytes = Vec::new();
    single.save_to(&mut bytes).ok()?;
    Some(bytes)
}

/// The nearest ancestor's value of an inheritable attribute.
fn inherited(document: &Document, page: &Dictionary, key: &[u8]) -> Option<Object> {
    let mut node = page.get(b"Parent").and_then(Object::as_reference).ok()?;
    // A page tree with a cycle must not hang us.
    for _ in 0..64 {
        let dict = document.get_dictionary(node).ok()?;
        if let Ok(value) = dict.get(key) {
            return Some(value.clone());
        }
        node = dict.get(b"Parent").and_then(Object::as_reference).ok()?;
    }
    None
}

/// Queues what `object` refers to; references to other pages or to the page tree become null,
/// and `/Parent` links (to the page tree, or up a form field tree) are dropped.
fn cut_references(
    object: &mut Object,
    page_id: ObjectId,
    every_page: &BTreeSet<ObjectId>,
    pending: &mut Vec<ObjectId>,
) {
    match object {
        Object::Reference(id) => {
            if *id != page_id && every_page.contains(id) {
                *object = Object::Null;
            } else {
                pending.push(*id);
            }
        }
        Object::Array(items) => {
            for item in items {
                cut_references(item, page_id, every_page, pending);
            }
        }
        Object::Dictionary(dict) => cut_dictionary(dict, page_id, every_page, pending),
        Object::Stream(stream) => cut_dictionary(&mut stream.dict, page_id, every_page, pending),
        _ => {}
    }
}

fn cut_dictionary(
    dict: &mut Dictionary,
    page_id: ObjectId,
    every_page: &BTreeSet<ObjectId>,
    pending: &mut Vec<ObjectId>,
) {
    dict.remove(b"Parent");
    for (_, value) in dict.iter_mut() {
        cut_references(value, page_id, every_page, pending);
    }
}

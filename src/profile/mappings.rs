//! The loaded objects of the process, as pprof mappings.
//!
//! A profile's addresses mean nothing without the objects they fall in:
//! pprof symbolizes an address by finding its mapping, the file (by path,
//! `$PPROF_BINARY_PATH` or GNU build ID) and the address's place in it.
//! As TCMalloc's `AddCurrentMappings`, the mappings come from
//! `dl_iterate_phdr`: one per executable `PT_LOAD` segment of each object,
//! with
//!
//! - `memory_start = dlpi_addr + p_vaddr`, `memory_limit = start + p_memsz`,
//!   `file_offset = p_offset`: the segment's own values, not the
//!   page-rounded ones of `/proc/self/maps`. `go tool pprof` relates an
//!   address to the file through the first executable `PT_LOAD`'s
//!   `start − p_vaddr`; page-rounded starts shift that by `p_vaddr −
//!   p_offset` (0x1000 in a typical Rust PIE) and name the wrong functions.
//! - the object's path: `dlpi_name`, or for the main program (the first
//!   object, whose name is empty) the target of `/proc/self/exe`; the vDSO
//!   is named `[vdso]`;
//! - its GNU build ID (`NT_GNU_BUILD_ID` in a `PT_NOTE` segment), in hex.
//!
//! The main program comes first, as pprof expects. This is called when a
//! profile is made, outside every allocator lock: it allocates, and the
//! loader holds its own lock while it calls back.

use core::ffi::{CStr, c_int, c_void};

/// A loaded object's executable segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First address of the segment in memory.
    pub start: u64,
    /// One past its last address.
    pub limit: u64,
    /// Its offset in the file.
    pub offset: u64,
    /// The file's path.
    pub path: String,
    /// The GNU build ID in lowercase hex, or empty.
    pub build_id: String,
}

impl Mapping {
    /// Whether `addr` lies in the segment.
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.limit
    }
}

const NT_GNU_BUILD_ID: u32 = 3;

/// The executable segments of every loaded object, main program first.
pub fn current_mappings() -> Vec<Mapping> {
    struct State {
        out: Vec<Mapping>,
        first: bool,
    }

    unsafe extern "C" fn each(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> c_int {
        // SAFETY: `data` is the `State` passed below, alive for the call.
        let state = unsafe { &mut *data.cast::<State>() };
        // SAFETY: the loader passes a valid info for the call's duration.
        let info = unsafe { &*info };
        let first = core::mem::replace(&mut state.first, false);
        if info.dlpi_phdr.is_null() || info.dlpi_phnum == 0 {
            return 0;
        }
        // SAFETY: dlpi_phdr points at dlpi_phnum program headers.
        let phdrs = unsafe { core::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
        // SAFETY: a non-null dlpi_name is a NUL-terminated string.
        let name = if info.dlpi_name.is_null() { c"" } else { unsafe { CStr::from_ptr(info.dlpi_name) } };
        let path = if !name.is_empty() {
            name.to_string_lossy().into_owned()
        } else if first {
            std::fs::read_link("/proc/self/exe").map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
        } else {
            "[vdso]".to_string()
        };
        let build_id = build_id(info.dlpi_addr, phdrs);
        for ph in phdrs.iter().filter(|ph| ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0) {
            let start = info.dlpi_addr.wrapping_add(ph.p_vaddr);
            state.out.push(Mapping {
                start,
                limit: start.wrapping_add(ph.p_memsz),
                offset: ph.p_offset,
                path: path.clone(),
                build_id: build_id.clone(),
            });
        }
        0
    }

    let mut state = State { out: Vec::new(), first: true };
    // SAFETY: the callback matches the expected signature and only uses
    // `state` while dl_iterate_phdr runs.
    unsafe { libc::dl_iterate_phdr(Some(each), (&raw mut state).cast()) };
    state.out
}

/// The GNU build ID in the object's note segments, in hex.
fn build_id(base: u64, phdrs: &[libc::Elf64_Phdr]) -> String {
    for ph in phdrs.iter().filter(|ph| ph.p_type == libc::PT_NOTE) {
        let addr = base.wrapping_add(ph.p_vaddr) as usize;
        // SAFETY: a PT_NOTE segment of a loaded object is mapped readable
        // for p_memsz bytes.
        let notes = unsafe { core::slice::from_raw_parts(addr as *const u8, ph.p_memsz as usize) };
        let align = if ph.p_align == 8 { 8 } else { 4 };
        if let Some(id) = find_build_id(notes, align) {
            return id;
        }
    }
    String::new()
}

/// Walks ELF notes (`namesz`, `descsz`, `type`, name, desc, each padded to
/// `align`) for the GNU build ID.
pub(crate) fn find_build_id(mut notes: &[u8], align: usize) -> Option<String> {
    let word = |b: &[u8], i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().expect("four bytes")) as usize;
    while notes.len() >= 12 {
        let (namesz, descsz, ty) = (word(notes, 0), word(notes, 4), word(notes, 8) as u32);
        let name_end = 12usize.checked_add(namesz)?;
        let desc_start = name_end.checked_next_multiple_of(align)?;
        let desc_end = desc_start.checked_add(descsz)?;
        if desc_end > notes.len() {
            return None;
        }
        if ty == NT_GNU_BUILD_ID && &notes[12..name_end] == b"GNU\0" {
            return Some(notes[desc_start..desc_end].iter().map(|b| format!("{b:02x}")).collect());
        }
        notes = &notes[desc_end.checked_next_multiple_of(align)?.min(notes.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_main_program_comes_first_and_holds_our_code() {
        let maps = current_mappings();
        assert!(!maps.is_empty());
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(maps[0].path, exe.to_string_lossy());
        let here = current_mappings as *const () as usize as u64;
        let m = maps.iter().find(|m| m.contains(here)).expect("a mapping holds this function");
        assert_eq!(m.path, maps[0].path);
        // The linker gave the test binary a build ID (20 bytes of SHA-1
        // with GNU ld's default).
        assert!(m.build_id.len() >= 16 && m.build_id.bytes().all(|b| b.is_ascii_hexdigit()), "{:?}", m.build_id);
        // libc is there too, and every mapping is non-empty.
        assert!(maps.iter().any(|m| m.path.contains("libc")));
        assert!(maps.iter().all(|m| m.start < m.limit));
    }

    #[test]
    fn notes_are_parsed_with_padding_and_other_notes_first() {
        let mut n = Vec::new();
        // An ABI tag note ("GNU", type 1, 16 bytes of desc).
        n.extend_from_slice(&4u32.to_ne_bytes());
        n.extend_from_slice(&16u32.to_ne_bytes());
        n.extend_from_slice(&1u32.to_ne_bytes());
        n.extend_from_slice(b"GNU\0");
        n.extend_from_slice(&[0; 16]);
        // A build ID of 3 bytes (padded to 4).
        n.extend_from_slice(&4u32.to_ne_bytes());
        n.extend_from_slice(&3u32.to_ne_bytes());
        n.extend_from_slice(&3u32.to_ne_bytes());
        n.extend_from_slice(b"GNU\0");
        n.extend_from_slice(&[0xab, 0x01, 0xff, 0]);
        assert_eq!(find_build_id(&n, 4).as_deref(), Some("ab01ff"));
        // Truncated or absurd sizes end the search, without a panic.
        assert_eq!(find_build_id(&n[..30], 4), None);
        let mut bad = n.clone();
        bad[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(find_build_id(&bad, 4), None);
        assert_eq!(find_build_id(&[], 4), None);
    }
}

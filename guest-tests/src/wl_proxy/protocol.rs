//! The part of the Wayland wire protocol the proxy must understand: message framing, and the
//! argument signatures of every request of the interfaces it lets clients bind (so that it
//! knows which arguments create objects and which carry fds), plus the few events that create
//! objects. Globals outside [`GLOBALS`] are hidden from clients, so every object a client can
//! reach has an interface listed here.

/// One argument kind (the letters of libwayland's signatures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// `i`, `u`, `f`, `o`: one 32-bit word.
    Word,
    /// `n`: a new object of the given interface.
    NewId(&'static str),
    /// `n` without interface (`wl_registry.bind`): string, version, id.
    UntypedNewId,
    /// `s`: length-prefixed string, padded to 4.
    Str,
    /// `a`: length-prefixed array, padded to 4.
    Array,
    /// `h`: a file descriptor (no bytes on the wire).
    Fd,
}

use Arg::*;

/// An interface: its name and, per opcode, its request arguments.
#[derive(Debug)]
pub struct Interface {
    /// Wayland interface name.
    pub name: &'static str,
    /// Requests by opcode.
    pub requests: &'static [&'static [Arg]],
}

const W: Arg = Word;

/// Every interface a client of the proxy can hold an object of.
pub static INTERFACES: &[Interface] = &[
    Interface {
        name: "wl_display",
        requests: &[&[NewId("wl_callback")], &[NewId("wl_registry")]],
    },
    Interface {
        name: "wl_registry",
        requests: &[&[W, UntypedNewId]],
    },
    Interface {
        name: "wl_callback",
        requests: &[],
    },
    Interface {
        name: "wl_compositor",
        requests: &[&[NewId("wl_surface")], &[NewId("wl_region")]],
    },
    Interface {
        name: "wl_surface",
        requests: &[
            &[],                     // destroy
            &[W, W, W],              // attach
            &[W, W, W, W],           // damage
            &[NewId("wl_callback")], // frame
            &[W],                    // set_opaque_region
            &[W],                    // set_input_region
            &[],                     // commit
            &[W],                    // set_buffer_transform
            &[W],                    // set_buffer_scale
            &[W, W, W, W],           // damage_buffer
            &[W, W],                 // offset
        ],
    },
    Interface {
        name: "wl_region",
        requests: &[&[], &[W, W, W, W], &[W, W, W, W]],
    },
    Interface {
        name: "wl_shm",
        requests: &[&[NewId("wl_shm_pool"), Fd, W], &[]],
    },
    Interface {
        name: "wl_shm_pool",
        requests: &[&[NewId("wl_buffer"), W, W, W, W, W], &[], &[W]],
    },
    Interface {
        name: "wl_buffer",
        requests: &[&[]],
    },
    Interface {
        name: "wl_output",
        requests: &[&[]],
    },
    Interface {
        name: "xdg_wm_base",
        requests: &[
            &[],
            &[NewId("xdg_positioner")],
            &[NewId("xdg_surface"), W],
            &[W],
        ],
    },
    Interface {
        name: "xdg_positioner",
        requests: &[
            &[],
            &[W, W],
            &[W, W, W, W],
            &[W],
            &[W],
            &[W],
            &[W, W],
            &[],
            &[W, W],
            &[W],
        ],
    },
    Interface {
        name: "xdg_surface",
        requests: &[
            &[],
            &[NewId("xdg_toplevel")],
            &[NewId("xdg_popup"), W, W],
            &[W, W, W, W],
            &[W],
        ],
    },
    Interface {
        name: "xdg_toplevel",
        requests: &[
            &[],
            &[W],
            &[Str],
            &[Str],
            &[W, W, W, W],
            &[W, W],
            &[W, W, W],
            &[W, W],
            &[W, W],
            &[],
            &[],
            &[W],
            &[],
            &[],
        ],
    },
    Interface {
        name: "xdg_popup",
        requests: &[&[], &[W, W], &[W, W]],
    },
    Interface {
        name: "zwp_linux_dmabuf_v1",
        requests: &[&[], &[NewId("zwp_linux_buffer_params_v1")]],
    },
    Interface {
        name: "zwp_linux_buffer_params_v1",
        requests: &[
            &[],
            &[Fd, W, W, W, W, W],
            &[W, W, W, W],
            &[NewId("wl_buffer"), W, W, W, W],
        ],
    },
];

/// Globals the proxy shows its clients, with the highest version it understands.
/// (`zwp_linux_dmabuf_v1` stops at 3: version 4 feedback sends a format table fd and
/// objects this table does not describe.)
pub static GLOBALS: &[(&str, u32)] = &[
    ("wl_compositor", 5),
    ("wl_shm", 1),
    ("wl_output", 3),
    ("xdg_wm_base", 5),
    ("zwp_linux_dmabuf_v1", 3),
];

/// Events that create objects: (interface, opcode, interface of the new object).
pub static EVENT_NEW_IDS: &[(&str, u16, &str)] = &[("zwp_linux_buffer_params_v1", 0, "wl_buffer")];

/// The interface called `name`.
pub fn interface(name: &str) -> Option<&'static Interface> {
    INTERFACES.iter().find(|i| i.name == name)
}

/// Header of one message: (object, opcode, size in bytes including the header).
pub fn header(bytes: &[u8]) -> Option<(u32, u16, usize)> {
    if bytes.len() < 8 {
        return None;
    }
    let object = u32::from_le_bytes(bytes[0..4].try_into().ok()?);
    let word = u32::from_le_bytes(bytes[4..8].try_into().ok()?);
    Some((object, (word & 0xffff) as u16, (word >> 16) as usize))
}

/// A request walked against its signature.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Walked {
    /// Objects created: (id, interface), `interface` from the signature or (for `bind`) the
    /// string argument.
    pub new_objects: Vec<(u32, String)>,
    /// How many fds the request carries.
    pub fds: usize,
    /// The words of the arguments that are words (for the proxy's own bookkeeping).
    pub words: Vec<u32>,
    /// String arguments.
    pub strings: Vec<String>,
}

/// Walks `args` (the bytes after the header) of a message with signature `sig`. `None` when
/// the bytes do not fit the signature.
pub fn walk(sig: &[Arg], args: &[u8]) -> Option<Walked> {
    let mut at = 0usize;
    let mut out = Walked::default();
    let word = |at: &mut usize| -> Option<u32> {
        let w = u32::from_le_bytes(args.get(*at..*at + 4)?.try_into().ok()?);
        *at += 4;
        Some(w)
    };
    let blob = |at: &mut usize| -> Option<Vec<u8>> {
        let len = u32::from_le_bytes(args.get(*at..*at + 4)?.try_into().ok()?) as usize;
        *at += 4;
        let padded = len.checked_add(3)? & !3;
        let bytes = args.get(*at..*at + len)?.to_vec();
        *at = at.checked_add(padded)?;
        Some(bytes)
    };
    for arg in sig {
        match arg {
            Word => {
                let w = word(&mut at)?;
                out.words.push(w);
            }
            NewId(iface) => {
                let id = word(&mut at)?;
                out.new_objects.push((id, (*iface).to_string()));
            }
            UntypedNewId => {
                let name = blob(&mut at)?;
                let name = String::from_utf8_lossy(name.strip_suffix(&[0]).unwrap_or(&name));
                let version = word(&mut at)?;
                let id = word(&mut at)?;
                out.words.push(version);
                out.new_objects.push((id, name.into_owned()));
            }
            Str => {
                let s = blob(&mut at)?;
                let s = String::from_utf8_lossy(s.strip_suffix(&[0]).unwrap_or(&s)).into_owned();
                out.strings.push(s);
            }
            Array => {
                blob(&mut at)?;
            }
            Fd => out.fds += 1,
        }
    }
    (at == args.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u32 + 1).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }

    #[test]
    fn bind_is_walked_with_its_interface_string() {
        let mut args = 7u32.to_le_bytes().to_vec();
        string(&mut args, "wl_shm");
        args.extend_from_slice(&1u32.to_le_bytes());
        args.extend_from_slice(&9u32.to_le_bytes());
        let walked = walk(interface("wl_registry").unwrap().requests[0], &args).unwrap();
        assert_eq!(walked.new_objects, vec![(9, "wl_shm".to_string())]);
        assert_eq!(walked.words, vec![7, 1]);
    }

    #[test]
    fn create_pool_has_one_fd_and_two_words_on_the_wire() {
        let args: Vec<u8> = [5u32, 4096].iter().flat_map(|w| w.to_le_bytes()).collect();
        let walked = walk(interface("wl_shm").unwrap().requests[0], &args).unwrap();
        assert_eq!(walked.fds, 1);
        assert_eq!(walked.new_objects, vec![(5, "wl_shm_pool".to_string())]);
        assert_eq!(walked.words, vec![4096]);
    }

    #[test]
    fn bytes_that_do_not_fit_the_signature_are_refused() {
        let sig = interface("xdg_toplevel").unwrap().requests[2];
        let mut args = Vec::new();
        string(&mut args, "title");
        assert!(walk(sig, &args).is_some());
        assert!(walk(sig, &args[..args.len() - 4]).is_none());
        args.extend_from_slice(&[0; 4]);
        assert!(walk(sig, &args).is_none(), "trailing bytes");
        // A string length past the end.
        let huge = u32::MAX.to_le_bytes();
        assert!(walk(sig, &huge).is_none());
    }

    #[test]
    fn every_new_id_names_a_known_interface() {
        for iface in INTERFACES {
            for sig in iface.requests {
                for arg in *sig {
                    if let NewId(name) = arg {
                        assert!(interface(name).is_some(), "{}: {name}", iface.name);
                    }
                }
            }
        }
        for (name, _) in GLOBALS {
            assert!(interface(name).is_some(), "{name}");
        }
    }
}

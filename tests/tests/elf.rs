//! Reading a codec name from a library file through a process's load bias: how the daemon
//! names streams whose name the kernel could not read and whose process is already gone.

use std::fs::File;

use observer::elf;

#[test]
fn codec_names_read_from_the_file_through_the_load_bias() {
    let path = "/usr/lib/x86_64-linux-gnu/libavcodec.so.59";
    let lib = elf::inspect(path.as_ref())
        .expect("inspect")
        .expect("libavcodec is FFmpeg");
    let open2 = lib.open2_vaddr.expect("avcodec_open2 in libavcodec");
    let data = std::fs::read(path).unwrap();
    // Where the string "mpeg4" sits in the file (linkers merge it into the tail of a longer
    // string, so it need not follow a NUL), and so the address a process sees it at.
    let at = data
        .windows(6)
        .position(|w| w == b"mpeg4\0")
        .expect("the name in the file") as u64;
    let (vaddr, _, off) = *lib
        .segments
        .iter()
        .find(|(_, size, off)| at >= *off && at - off < *size)
        .expect("a loadable segment holds it");
    let name_vaddr = vaddr + (at - off);
    let bias = 0x7f12_3400_0000;
    let file = File::open(path).unwrap();
    let got = lib
        .identifier_at(&file, bias + open2, bias + name_vaddr)
        .expect("the name");
    assert_eq!(&got[..6], b"mpeg4\0");
    // A pointer outside the file, or the wrong bias, reads nothing plausible.
    assert!(lib.identifier_at(&file, bias + open2, 0x10).is_none());
    let wrong = lib.identifier_at(&file, bias + open2 + 3, bias + name_vaddr);
    assert_ne!(wrong.map(|w| w[..6].to_vec()), Some(b"mpeg4\0".to_vec()));
}

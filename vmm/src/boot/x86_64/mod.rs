// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! x86_64 boot: kernel and initrd loading, boot_params / `hvm_start_info`, e820, and the
//! modules that build the initial CPU state.
//!
//! Memory map (guest physical, RAM from 0):
//!
//! | range | use |
//! |---|---|
//! | 0x500 | boot GDT ([`gdt`]) |
//! | 0x580 | empty IDT |
//! | 0x6000 | PVH `hvm_start_info`, module list, memory map |
//! | 0x7000 | Linux zero page (`boot_params`) |
//! | 0x8ff0 | boot stack pointer |
//! | 0x9000–0xdfff | identity page tables ([`paging`]) |
//! | 0x20000 | kernel command line |
//! | 0x9fc00–0x9ffff | MP table ([`mptable`]), reserved in e820 |
//! | 0x100000 | kernel (ELF loads by its physical addresses) |
//! | top of low RAM | initrd |
//! | 0xc0000000–4 GiB | MMIO gap; virtio-mmio at 0xd0000000 + i·0x1000 |

pub mod cpuid;
pub mod gdt;
pub mod mptable;
pub mod msr;
pub mod paging;
pub mod regs;

use std::fs::File;
use std::path::Path;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{BzImage, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::memory::MMIO_GAP_START;
use regs::EntryMode;

/// Guest-physical layout constants.
pub mod layout {
    /// Boot GDT.
    pub const BOOT_GDT_START: u64 = 0x500;
    /// Boot IDT (empty).
    pub const BOOT_IDT_START: u64 = 0x580;
    /// PVH `hvm_start_info`.
    pub const PVH_INFO_START: u64 = 0x6000;
    /// PVH module list (the initrd).
    pub const PVH_MODLIST_START: u64 = 0x6040;
    /// PVH memory map.
    pub const PVH_MEMMAP_START: u64 = 0x6080;
    /// Linux zero page.
    pub const ZERO_PAGE_START: u64 = 0x7000;
    /// Initial stack pointer.
    pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
    /// PML4.
    pub const PML4_START: u64 = 0x9000;
    /// PDPT.
    pub const PDPTE_START: u64 = 0xa000;
    /// First page directory.
    pub const PDE_START: u64 = 0xb000;
    /// Kernel command line.
    pub const CMDLINE_START: u64 = 0x20000;
    /// Maximum command-line length including the NUL (Linux's x86 `COMMAND_LINE_SIZE`).
    pub const CMDLINE_MAX_SIZE: usize = 2048;
    /// MP table (last KiB of base memory, EBDA).
    pub const MPTABLE_START: u64 = 0x9fc00;
    /// End of base memory.
    pub const EBDA_END: u64 = 0xa0000;
    /// Start of high memory: kernels load from here.
    pub const HIMEM_START: u64 = 0x10_0000;
    /// Local APIC.
    pub const APIC_DEFAULT_BASE: u64 = 0xfee0_0000;
    /// IOAPIC.
    pub const IOAPIC_DEFAULT_BASE: u64 = 0xfec0_0000;
    /// KVM's TSS (three pages below 4 GiB; in the MMIO gap).
    pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
}

use layout::*;

/// e820 entry type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 entry type: reserved.
pub const E820_RESERVED: u32 = 2;
/// `hvm_start_info` magic ("xEn3" with the high bit set).
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// Boot protocol header magic "HdrS".
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
/// Offset of the 64-bit entry point in a loaded bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Errors from loading and configuring the guest for boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file cannot be opened.
    #[error("cannot open kernel {path}")]
    OpenKernel {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Neither an ELF nor a bzImage, or loading failed.
    #[error("cannot load kernel {path} (ELF: {elf}; bzImage: {bzimage})")]
    LoadKernel {
        /// The file.
        path: std::path::PathBuf,
        /// The ELF loader's complaint.
        elf: linux_loader::loader::Error,
        /// The bzImage loader's complaint.
        bzimage: linux_loader::loader::Error,
    },
    /// A test payload must be an ELF with a 64-bit entry.
    #[error("test-payload mode needs an ELF kernel: {0}")]
    TestPayloadNotElf(linux_loader::loader::Error),
    /// The initrd cannot be read.
    #[error("cannot read initrd {path}")]
    OpenInitrd {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The initrd does not fit in guest memory above the kernel.
    #[error("initrd of {size} bytes does not fit in guest memory")]
    InitrdTooLarge {
        /// Its size.
        size: u64,
    },
    /// Writing the initrd failed.
    #[error("cannot write the initrd to guest memory")]
    WriteInitrd(#[source] vm_memory::GuestMemoryError),
    /// Command line problem.
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// Writing the command line failed.
    #[error("cannot write the kernel command line")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    /// Writing boot_params / start_info failed.
    #[error("cannot write boot parameters")]
    WriteBootParams(#[source] linux_loader::configurator::Error),
    /// Writing other boot data failed.
    #[error("cannot write boot data to guest memory")]
    WriteMemory(#[source] vm_memory::GuestMemoryError),
    /// The boot GDT could not be written.
    #[error("cannot write page tables")]
    Paging(#[from] paging::PagingError),
    /// The MP table could not be written.
    #[error("cannot write the MP table")]
    Mptable(#[from] mptable::MptableError),
}

/// A loaded kernel.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    /// Where the boot vCPU starts.
    pub entry: GuestAddress,
    /// Which protocol the entry expects.
    pub mode: EntryMode,
    /// The bzImage's setup header, if the kernel was a bzImage.
    pub setup_header: Option<setup_header>,
    /// First byte after the loaded image.
    pub kernel_end: u64,
}

/// Loads an ELF (PVH note → PVH entry, else the 64-bit entry) or a bzImage.
///
/// With `test_payload`, the kernel must be an ELF and is entered at its 64-bit entry at CPL 3.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    test_payload: bool,
) -> Result<LoadedKernel, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::OpenKernel {
        path: path.to_path_buf(),
        source,
    })?;
    match Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))) {
        Ok(res) => {
            // linux-loader reports the end of the highest segment as an absolute address.
            let kernel_end = res.kernel_end;
            let (entry, mode) = match (test_payload, res.pvh_boot_cap) {
                (true, _) => (res.kernel_load, EntryMode::TestPayload),
                (false, PvhBootCapability::PvhEntryPresent(addr)) => (addr, EntryMode::Pvh),
                (false, _) => (res.kernel_load, EntryMode::Linux64),
            };
            Ok(LoadedKernel {
                entry,
                mode,
                setup_header: None,
                kernel_end,
            })
        }
        Err(elf) => {
            if test_payload {
                return Err(BootError::TestPayloadNotElf(elf));
            }
            match BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))) {
                Ok(res) => Ok(LoadedKernel {
                    entry: res
                        .kernel_load
                        .checked_add(BZIMAGE_64BIT_ENTRY_OFFSET)
                        .unwrap_or(res.kernel_load),
                    mode: EntryMode::Linux64,
                    setup_header: res.setup_header,
                    kernel_end: res.kernel_end,
                }),
                Err(bzimage) => Err(BootError::LoadKernel {
                    path: path.to_path_buf(),
                    elf,
                    bzimage,
                }),
            }
        }
    }
}

/// End of RAM below the MMIO gap.
pub fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.last_addr()
        .raw_value()
        .saturating_add(1)
        .min(MMIO_GAP_START)
}

/// Copies the initrd to the top of low RAM (page aligned, above `kernel_end`, below
/// `addr_max`); returns `(address, size)`.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    addr_max: u64,
) -> Result<(GuestAddress, u64), BootError> {
    let data = std::fs::read(path).map_err(|source| BootError::OpenInitrd {
        path: path.to_path_buf(),
        source,
    })?;
    let size =
        u64::try_from(data.len()).map_err(|_| BootError::InitrdTooLarge { size: u64::MAX })?;
    let top = low_ram_end(mem).min(addr_max.saturating_add(1));
    let start = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end.max(HIMEM_START))
        .ok_or(BootError::InitrdTooLarge { size })?;
    mem.write_slice(&data, GuestAddress(start))
        .map_err(BootError::WriteInitrd)?;
    Ok((GuestAddress(start), size))
}

/// The guest's e820 map: base memory, the reserved EBDA/BIOS area, RAM from 1 MiB.
pub fn e820_entries(mem: &GuestMemoryMmap) -> Vec<(u64, u64, u32)> {
    let mut out = vec![
        (0, MPTABLE_START, E820_RAM),
        (MPTABLE_START, EBDA_END - MPTABLE_START, E820_RESERVED),
    ];
    for region in mem.iter() {
        let start = vm_memory::GuestMemoryRegion::start_addr(region).raw_value();
        let len = vm_memory::GuestMemoryRegion::len(region);
        let end = start.saturating_add(len);
        let start = start.max(HIMEM_START);
        if end > start {
            out.push((start, end - start, E820_RAM));
        }
    }
    out
}

/// Everything the boot-data writer needs.
#[derive(Debug)]
pub struct BootSetup<'a> {
    /// The loaded kernel.
    pub kernel: &'a LoadedKernel,
    /// The full command line (NUL added here).
    pub cmdline: &'a str,
    /// The initrd's place, if any.
    pub initrd: Option<(GuestAddress, u64)>,
    /// vCPU count (MP table).
    pub vcpus: u8,
}

/// Writes command line, GDT/IDT, page tables, MP table and boot_params or `hvm_start_info`.
/// Returns the CR3 value for the boot vCPU.
pub fn configure_system(mem: &GuestMemoryMmap, setup: &BootSetup<'_>) -> Result<u64, BootError> {
    let mut cmdline =
        linux_loader::cmdline::Cmdline::new(CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    cmdline
        .insert_str(setup.cmdline)
        .map_err(BootError::Cmdline)?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline)
        .map_err(BootError::WriteCmdline)?;
    let cmdline_len = setup.cmdline.len() + 1;

    let gdt = gdt::boot_gdt();
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(BootError::WriteMemory)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(BootError::WriteMemory)?;
    let cr3 = paging::setup_page_tables(mem, setup.kernel.mode == EntryMode::TestPayload)?;
    mptable::setup_mptable(mem, setup.vcpus)?;

    let e820 = e820_entries(mem);
    match setup.kernel.mode {
        EntryMode::Pvh => write_pvh_start_info(mem, &e820, cmdline_len, setup.initrd)?,
        EntryMode::Linux64 | EntryMode::TestPayload => {
            write_boot_params(mem, setup.kernel, &e820, cmdline_len, setup.initrd)?
        }
    }
    Ok(cr3)
}

fn write_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    e820: &[(u64, u64, u32)],
    cmdline_len: usize,
    initrd: Option<(GuestAddress, u64)>,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    params.hdr.cmd_line_ptr = u32::try_from(CMDLINE_START).unwrap_or(0);
    params.hdr.cmdline_size = u32::try_from(cmdline_len).unwrap_or(0);
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = u32::try_from(addr.raw_value()).unwrap_or(0);
        params.hdr.ramdisk_size = u32::try_from(size).unwrap_or(0);
    }
    for (i, (addr, size, kind)) in e820.iter().enumerate().take(params.e820_table.len()) {
        params.e820_table[i].addr = *addr;
        params.e820_table[i].size = *size;
        params.e820_table[i].r#type = *kind;
        params.e820_entries = u8::try_from(i + 1).unwrap_or(u8::MAX);
    }
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(BootError::WriteBootParams)
}

fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    e820: &[(u64, u64, u32)],
    _cmdline_len: usize,
    initrd: Option<(GuestAddress, u64)>,
) -> Result<(), BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|(addr, size, kind)| hvm_memmap_table_entry {
            addr: *addr,
            size: *size,
            type_: *kind,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: u32::try_from(memmap.len()).unwrap_or(0),
        ..Default::default()
    };
    let mut params = BootParams::new::<hvm_start_info>(&info, GuestAddress(PVH_INFO_START));
    if let Some((addr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
        params = BootParams::new::<hvm_start_info>(&info, GuestAddress(PVH_INFO_START));
        let module = hvm_modlist_entry {
            paddr: addr.raw_value(),
            size,
            ..Default::default()
        };
        params.set_modules(&[module], GuestAddress(PVH_MODLIST_START));
    }
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(BootError::WriteBootParams)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(mib: u64) -> GuestMemoryMmap {
        crate::memory::allocate(mib).unwrap()
    }

    #[test]
    fn e820_reserves_ebda_and_skips_the_legacy_hole() {
        let m = mem(64);
        let e = e820_entries(&m);
        assert_eq!(e[0], (0, MPTABLE_START, E820_RAM));
        assert_eq!(e[1], (MPTABLE_START, 0x400, E820_RESERVED));
        assert_eq!(e[2], (HIMEM_START, (64 << 20) - HIMEM_START, E820_RAM));
        assert_eq!(e.len(), 3);
    }

    #[test]
    fn boot_params_carry_cmdline_e820_and_initrd() {
        let m = mem(32);
        let k = LoadedKernel {
            entry: GuestAddress(0x20_0000),
            mode: EntryMode::Linux64,
            setup_header: None,
            kernel_end: 0x30_0000,
        };
        let dir = std::env::temp_dir().join(format!("vmrun-vmm-initrd-{}", std::process::id()));
        std::fs::write(&dir, vec![0xabu8; 5000]).unwrap();
        let initrd = load_initrd(&m, &dir, k.kernel_end, 0x37ff_ffff).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(initrd.0.raw_value() & 0xfff, 0);
        assert!(initrd.0.raw_value() + 5000 <= 32 << 20);
        let setup = BootSetup {
            kernel: &k,
            cmdline: "console=ttyS0 x=1",
            initrd: Some(initrd),
            vcpus: 2,
        };
        let cr3 = configure_system(&m, &setup).unwrap();
        assert_eq!(cr3, PML4_START);
        let p: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.ramdisk_size }, 5000);
        assert_eq!(u64::from(p.hdr.ramdisk_image), initrd.0.raw_value());
        assert_eq!(p.e820_entries, 3);
        let mut buf = [0u8; 18];
        m.read_slice(&mut buf, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&buf, b"console=ttyS0 x=1\0");
        let mp = mptable::build(2, MPTABLE_START).unwrap();
        let mut got = vec![0u8; mp.len()];
        m.read_slice(&mut got, GuestAddress(MPTABLE_START)).unwrap();
        assert_eq!(got, mp);
    }

    #[test]
    fn initrd_too_large_is_an_error() {
        let m = mem(16);
        let f = std::env::temp_dir().join(format!("vmrun-vmm-big-{}", std::process::id()));
        std::fs::write(&f, vec![0u8; 20 << 20]).unwrap();
        let r = load_initrd(&m, &f, HIMEM_START, u64::MAX);
        std::fs::remove_file(&f).unwrap();
        assert!(matches!(r, Err(BootError::InitrdTooLarge { .. })));
    }

    #[test]
    fn pvh_start_info_is_written() {
        let m = mem(16);
        let k = LoadedKernel {
            entry: GuestAddress(0x100_0000),
            mode: EntryMode::Pvh,
            setup_header: None,
            kernel_end: 0x20_0000,
        };
        let setup = BootSetup {
            kernel: &k,
            cmdline: "a",
            initrd: None,
            vcpus: 1,
        };
        configure_system(&m, &setup).unwrap();
        let info: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.memmap_entries, 3);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
    }

    #[test]
    fn loading_garbage_fails_cleanly() {
        let m = mem(16);
        let f = std::env::temp_dir().join(format!("vmrun-vmm-garbage-{}", std::process::id()));
        std::fs::write(&f, b"not a kernel").unwrap();
        let r = load_kernel(&m, &f, false);
        std::fs::remove_file(&f).unwrap();
        assert!(matches!(r, Err(BootError::LoadKernel { .. })));
        assert!(matches!(
            load_kernel(&m, Path::new("/nonexistent/kernel"), false),
            Err(BootError::OpenKernel { .. })
        ));
    }
}

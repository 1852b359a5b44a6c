//! The Vulkan calls of `vk-hostmem`, through `ash`: the only `unsafe` of the program.
//!
//! [`Gpu`] owns an instance, a device and one queue; [`MappedBuffer`] is a buffer bound to
//! its own HOST_VISIBLE allocation, mapped for as long as it lives (venus backs such an
//! allocation with a HOST3D blob the guest kernel maps through the host-visible region).
//! Everything is destroyed in reverse order on drop.
#![allow(unsafe_code)]

use std::ffi::CStr;

use ash::vk;

/// A Vulkan failure, with the call that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{call}: {result:?}")]
pub struct VkError {
    /// The call.
    pub call: &'static str,
    /// What it returned.
    pub result: vk::Result,
}

fn vk_err(call: &'static str) -> impl Fn(vk::Result) -> VkError {
    move |result| VkError { call, result }
}

/// An opened device with one queue that can copy.
pub struct Gpu {
    _entry: ash::Entry,
    instance: ash::Instance,
    device: ash::Device,
    queue: vk::Queue,
    pool: vk::CommandPool,
    memory: vk::PhysicalDeviceMemoryProperties,
    name: String,
}

/// One memory type, as the device describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryType {
    /// Its index.
    pub index: u32,
    /// HOST_COHERENT: no flush/invalidate needed around CPU access.
    pub coherent: bool,
    /// HOST_CACHED.
    pub cached: bool,
}

impl Gpu {
    /// Opens the first device whose name contains `want` (any device when empty).
    pub fn open(want: &str) -> Result<Gpu, String> {
        // SAFETY: loads the system's Vulkan loader (libvulkan.so.1); nothing else runs
        // Vulkan in this process.
        let entry = unsafe { ash::Entry::load() }.map_err(|e| format!("libvulkan: {e}"))?;
        let app = vk::ApplicationInfo::default()
            .application_name(c"vk-hostmem")
            .api_version(vk::API_VERSION_1_1);
        let info = vk::InstanceCreateInfo::default().application_info(&app);
        // SAFETY: a valid create info that outlives the call.
        let instance = unsafe { entry.create_instance(&info, None) }
            .map_err(|e| format!("vkCreateInstance: {e:?}"))?;
        match Self::open_device(&entry, &instance, want) {
            Ok((device, queue, pool, memory, name)) => Ok(Gpu {
                _entry: entry,
                instance,
                device,
                queue,
                pool,
                memory,
                name,
            }),
            Err(e) => {
                // SAFETY: nothing was created from the instance that is still alive.
                unsafe { instance.destroy_instance(None) };
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn open_device(
        _entry: &ash::Entry,
        instance: &ash::Instance,
        want: &str,
    ) -> Result<
        (
            ash::Device,
            vk::Queue,
            vk::CommandPool,
            vk::PhysicalDeviceMemoryProperties,
            String,
        ),
        String,
    > {
        // SAFETY: a live instance.
        let devices = unsafe { instance.enumerate_physical_devices() }
            .map_err(|e| format!("vkEnumeratePhysicalDevices: {e:?}"))?;
        let mut names = Vec::new();
        for pd in devices {
            // SAFETY: a physical device of this instance.
            let props = unsafe { instance.get_physical_device_properties(pd) };
            let name = props
                .device_name_as_c_str()
                .map(CStr::to_string_lossy)
                .unwrap_or_default()
                .into_owned();
            if !name.contains(want) {
                names.push(name);
                continue;
            }
            // SAFETY: as above.
            let families = unsafe { instance.get_physical_device_queue_family_properties(pd) };
            let family = families
                .iter()
                .position(|f| {
                    f.queue_flags.intersects(
                        vk::QueueFlags::GRAPHICS
                            | vk::QueueFlags::COMPUTE
                            | vk::QueueFlags::TRANSFER,
                    )
                })
                .ok_or_else(|| format!("{name}: no queue family can copy"))?
                as u32;
            let priorities = [1.0f32];
            let queues = [vk::DeviceQueueCreateInfo::default()
                .queue_family_index(family)
                .queue_priorities(&priorities)];
            let info = vk::DeviceCreateInfo::default().queue_create_infos(&queues);
            // SAFETY: valid create info referencing arrays that outlive the call.
            let device = unsafe { instance.create_device(pd, &info, None) }
                .map_err(|e| format!("vkCreateDevice on {name}: {e:?}"))?;
            // SAFETY: the queue we asked for at device creation.
            let queue = unsafe { device.get_device_queue(family, 0) };
            let pool_info = vk::CommandPoolCreateInfo::default().queue_family_index(family);
            // SAFETY: a live device.
            let pool = match unsafe { device.create_command_pool(&pool_info, None) } {
                Ok(p) => p,
                Err(e) => {
                    // SAFETY: nothing was created from the device.
                    unsafe { device.destroy_device(None) };
                    return Err(format!("vkCreateCommandPool: {e:?}"));
                }
            };
            // SAFETY: as above.
            let memory = unsafe { instance.get_physical_device_memory_properties(pd) };
            return Ok((device, queue, pool, memory, name));
        }
        Err(format!(
            "no Vulkan device named *{want}*; devices: {}",
            names.join(", ")
        ))
    }

    /// The device's name (`Virtio-GPU Venus (...)` for venus).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The first HOST_VISIBLE memory type allowed by `type_bits` (coherent ones first).
    pub fn host_visible_type(&self, type_bits: u32) -> Option<MemoryType> {
        let types = &self.memory.memory_types[..self.memory.memory_type_count as usize];
        let candidates = types.iter().enumerate().filter(|(i, t)| {
            type_bits & (1 << i) != 0
                && t.property_flags
                    .contains(vk::MemoryPropertyFlags::HOST_VISIBLE)
        });
        let pick = |(i, t): (usize, &vk::MemoryType)| MemoryType {
            index: i as u32,
            coherent: t
                .property_flags
                .contains(vk::MemoryPropertyFlags::HOST_COHERENT),
            cached: t
                .property_flags
                .contains(vk::MemoryPropertyFlags::HOST_CACHED),
        };
        let all: Vec<MemoryType> = candidates.map(pick).collect();
        all.iter()
            .find(|t| t.coherent)
            .or_else(|| all.first())
            .copied()
    }

    /// A buffer of `size` bytes (copy source and destination) in its own HOST_VISIBLE
    /// allocation. Fails with `vkMapMemory`'s error when the mapping is refused.
    pub fn host_visible_buffer(&self, size: u64) -> Result<MappedBuffer<'_>, VkError> {
        let info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(vk::BufferUsageFlags::TRANSFER_SRC | vk::BufferUsageFlags::TRANSFER_DST)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: a live device and a valid create info.
        let buffer =
            unsafe { self.device.create_buffer(&info, None) }.map_err(vk_err("vkCreateBuffer"))?;
        let mut out = MappedBuffer {
            gpu: self,
            buffer,
            memory: vk::DeviceMemory::null(),
            ptr: std::ptr::null_mut(),
            size: size as usize,
            memory_type: MemoryType {
                index: 0,
                coherent: true,
                cached: false,
            },
        };
        // SAFETY: the buffer was just created on this device.
        let req = unsafe { self.device.get_buffer_memory_requirements(buffer) };
        out.memory_type = self
            .host_visible_type(req.memory_type_bits)
            .ok_or(VkError {
                call: "no HOST_VISIBLE memory type for the buffer",
                result: vk::Result::ERROR_FEATURE_NOT_PRESENT,
            })?;
        let alloc = vk::MemoryAllocateInfo::default()
            .allocation_size(req.size)
            .memory_type_index(out.memory_type.index);
        // SAFETY: a valid allocate info for a memory type of this device.
        out.memory = unsafe { self.device.allocate_memory(&alloc, None) }
            .map_err(vk_err("vkAllocateMemory"))?;
        // SAFETY: fresh buffer and memory of this device, the memory large enough.
        unsafe { self.device.bind_buffer_memory(buffer, out.memory, 0) }
            .map_err(vk_err("vkBindBufferMemory"))?;
        // SAFETY: host-visible memory, not mapped yet; the pointer is used only while
        // `out` lives and unmapped before the memory is freed (Drop).
        let ptr = unsafe {
            self.device
                .map_memory(out.memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty())
        }
        .map_err(vk_err("vkMapMemory"))?;
        out.ptr = ptr.cast();
        Ok(out)
    }

    /// Copies `src` into `dst` on the GPU and waits for it (at most 60 s).
    pub fn copy(&self, src: &MappedBuffer<'_>, dst: &MappedBuffer<'_>) -> Result<(), VkError> {
        let size = src.size.min(dst.size) as u64;
        let alloc = vk::CommandBufferAllocateInfo::default()
            .command_pool(self.pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(1);
        // SAFETY: our pool on our device.
        let cbs = unsafe { self.device.allocate_command_buffers(&alloc) }
            .map_err(vk_err("vkAllocateCommandBuffers"))?;
        let result = self.record_and_wait(cbs[0], src.buffer, dst.buffer, size);
        // SAFETY: the command buffer is not pending any more (waited for, or never submitted).
        unsafe { self.device.free_command_buffers(self.pool, &cbs) };
        result
    }

    /// Submits an empty command buffer with a fence and waits for it (at most 60 s): a
    /// round trip through the host's queue that needs no mapping.
    pub fn submit_empty(&self) -> Result<(), VkError> {
        let alloc = vk::CommandBufferAllocateInfo::default()
            .command_pool(self.pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(1);
        // SAFETY: our pool on our device.
        let cbs = unsafe { self.device.allocate_command_buffers(&alloc) }
            .map_err(vk_err("vkAllocateCommandBuffers"))?;
        let begin = vk::CommandBufferBeginInfo::default()
            .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT);
        // SAFETY: a freshly allocated command buffer, recorded once (empty).
        let recorded = unsafe {
            self.device
                .begin_command_buffer(cbs[0], &begin)
                .map_err(vk_err("vkBeginCommandBuffer"))
                .and_then(|()| {
                    self.device
                        .end_command_buffer(cbs[0])
                        .map_err(vk_err("vkEndCommandBuffer"))
                })
        };
        let result = recorded.and_then(|()| self.submit_and_wait(&cbs));
        // SAFETY: the command buffer is not pending any more (waited for, or never submitted).
        unsafe { self.device.free_command_buffers(self.pool, &cbs) };
        result
    }

    fn record_and_wait(
        &self,
        cb: vk::CommandBuffer,
        src: vk::Buffer,
        dst: vk::Buffer,
        size: u64,
    ) -> Result<(), VkError> {
        let begin = vk::CommandBufferBeginInfo::default()
            .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT);
        let region = [vk::BufferCopy {
            src_offset: 0,
            dst_offset: 0,
            size,
        }];
        // Host writes before the copy, the copy's writes before host reads.
        let host_to_transfer = [vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::HOST_WRITE)
            .dst_access_mask(vk::AccessFlags::TRANSFER_READ)];
        let transfer_to_host = [vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
            .dst_access_mask(vk::AccessFlags::HOST_READ)];
        // SAFETY: a freshly allocated command buffer recorded once with buffers of this
        // device that outlive its execution (we wait below).
        unsafe {
            self.device
                .begin_command_buffer(cb, &begin)
                .map_err(vk_err("vkBeginCommandBuffer"))?;
            self.device.cmd_pipeline_barrier(
                cb,
                vk::PipelineStageFlags::HOST,
                vk::PipelineStageFlags::TRANSFER,
                vk::DependencyFlags::empty(),
                &host_to_transfer,
                &[],
                &[],
            );
            self.device.cmd_copy_buffer(cb, src, dst, &region);
            self.device.cmd_pipeline_barrier(
                cb,
                vk::PipelineStageFlags::TRANSFER,
                vk::PipelineStageFlags::HOST,
                vk::DependencyFlags::empty(),
                &transfer_to_host,
                &[],
                &[],
            );
            self.device
                .end_command_buffer(cb)
                .map_err(vk_err("vkEndCommandBuffer"))?;
        }
        self.submit_and_wait(&[cb])
    }

    /// Submits recorded command buffers with a fence and waits for it (at most 60 s).
    fn submit_and_wait(&self, cbs: &[vk::CommandBuffer]) -> Result<(), VkError> {
        // SAFETY: a live device.
        let fence = unsafe {
            self.device
                .create_fence(&vk::FenceCreateInfo::default(), None)
        }
        .map_err(vk_err("vkCreateFence"))?;
        let submit = [vk::SubmitInfo::default().command_buffers(cbs)];
        // SAFETY: a recorded command buffer, our queue, an unsignalled fence; we wait
        // for the fence before anything it uses is freed.
        let result = unsafe {
            self.device
                .queue_submit(self.queue, &submit, fence)
                .map_err(vk_err("vkQueueSubmit"))
                .and_then(|()| {
                    self.device
                        .wait_for_fences(&[fence], true, 60_000_000_000)
                        .map_err(vk_err("vkWaitForFences"))
                })
        };
        if result.is_err() {
            // SAFETY: make sure nothing is pending before the fence goes.
            let _ = unsafe { self.device.device_wait_idle() };
        }
        // SAFETY: the fence is signalled or the device idle.
        unsafe { self.device.destroy_fence(fence, None) };
        result
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // SAFETY: every buffer borrowed `self` and is gone; nothing is pending (copies
        // wait for completion).
        unsafe {
            self.device.destroy_command_pool(self.pool, None);
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}

/// A buffer bound to its own HOST_VISIBLE allocation, mapped while it lives.
pub struct MappedBuffer<'g> {
    gpu: &'g Gpu,
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    ptr: *mut u8,
    size: usize,
    memory_type: MemoryType,
}

impl MappedBuffer<'_> {
    /// The memory type it was allocated from.
    pub fn memory_type(&self) -> MemoryType {
        self.memory_type
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `size` bytes (at least the buffer's size) for as long as
        // `self` lives; the GPU writes to it only inside `Gpu::copy`, which waits for
        // completion and cannot run while this borrow exists (it takes `&self`, and we
        // never hand out a slice across a copy: callers re-borrow after it).
        unsafe { std::slice::from_raw_parts(self.ptr, self.size) }
    }

    /// The mapped bytes, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `bytes`, exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.size) }
    }

    fn range(&self) -> [vk::MappedMemoryRange<'static>; 1] {
        [vk::MappedMemoryRange::default()
            .memory(self.memory)
            .offset(0)
            .size(vk::WHOLE_SIZE)]
    }

    /// Makes host writes visible to the device (a no-op on coherent memory).
    pub fn flush(&self) -> Result<(), VkError> {
        if self.memory_type.coherent {
            return Ok(());
        }
        // SAFETY: a mapped range of our memory.
        unsafe { self.gpu.device.flush_mapped_memory_ranges(&self.range()) }
            .map_err(vk_err("vkFlushMappedMemoryRanges"))
    }

    /// Makes device writes visible to the host (a no-op on coherent memory).
    pub fn invalidate(&self) -> Result<(), VkError> {
        if self.memory_type.coherent {
            return Ok(());
        }
        // SAFETY: a mapped range of our memory.
        unsafe {
            self.gpu
                .device
                .invalidate_mapped_memory_ranges(&self.range())
        }
        .map_err(vk_err("vkInvalidateMappedMemoryRanges"))
    }
}

impl Drop for MappedBuffer<'_> {
    fn drop(&mut self) {
        // SAFETY: no GPU work uses the buffer (copies wait); unmapped before it is freed.
        unsafe {
            if !self.ptr.is_null() {
                self.gpu.device.unmap_memory(self.memory);
            }
            if self.memory != vk::DeviceMemory::null() {
                self.gpu.device.free_memory(self.memory, None);
            }
            self.gpu.device.destroy_buffer(self.buffer, None);
        }
    }
}

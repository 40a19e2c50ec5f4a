# RemoteChannel: Distributed's channel kept by one process and used from any,
# over libcluster's channel service (`cluster_channel_*`).
#
# The owner keeps elements as bytes; each element is a value in the reply
# encoding of wire.jl (the compact encoding for common values, Serialization
# otherwise). The element type lives in the Julia type (`RemoteChannel{T}`),
# so `put!` converts on the putting process. Every operation that can wait is
# a library future (`cluster_channel_*_async`) this task waits on: first by
# reading the owner's connection itself (`cluster_future_drive`, as
# remotecall_fetch does), then parked until the event loop reports the
# future ready; other tasks run meanwhile. A RemoteChannel passed to another
# process travels as a reference exported by the library, which counts its
# holders and frees the channel on its owner once none is left (dead
# holders included).

"""
    RemoteChannel(pid::Integer=myid())

A reference to a `Channel{Any}(1)` kept by process `pid`.

    RemoteChannel(f::Function, pid::Integer=myid())

A reference to a channel kept by `pid` of the type and size of the `Channel`
that `f()` returns: `RemoteChannel(()->Channel{Int}(10), pid)` holds up to
10 `Int`s, `Channel(0)` is unbuffered (a `put!` waits for a taker),
`Channel(Inf)` unbounded. Unlike Distributed, `f` is called on the calling
process (to learn the element type and size) and the channel made on `pid`
by the library; `f` must return a `Channel` (other `AbstractChannel` types
are not supported), and a task bound to it is not carried over.

Fields as Distributed's: `where` is the process keeping the channel,
`whence` the one that made it, `id` its number there.
"""
mutable struct RemoteChannel{T<:AbstractChannel} <: AbstractRemoteRef
    where::Int
    whence::Int
    id::Int
    handle::Ptr{Cvoid}      # the library's handle (one reference); C_NULL once released

    function RemoteChannel{T}(handle::Ptr{Cvoid}, where::Integer, whence::Integer, id::Integer) where {T<:AbstractChannel}
        rc = new{T}(Int(where), Int(whence), Int(id), handle)
        finalizer(release!, rc)
        rc
    end
end

const NEXT_CHANNEL = Ref(0)

RemoteChannel(pid::Integer = myid()) = new_remote_channel(Channel{Any}, 1, pid)

function RemoteChannel(f::Function, pid::Integer = myid())
    c = f()
    c isa Channel || throw(ArgumentError(
        "RemoteChannel: f() returned a $(typeof(c)); LibCluster supports only Channel " *
        "(Channel{T}(n), Channel(0), Channel(Inf))"))
    new_remote_channel(typeof(c), c.sz_max, pid)
end

function new_remote_channel(::Type{T}, sz_max::Integer, pid::Integer) where {T<:Channel}
    check_pid(pid)
    ctx = context()
    capacity = sz_max == typemax(Int) ? typemax(Csize_t) : Csize_t(sz_max)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    check_call(CAPI.cluster_channel_new(ctx, Int32(pid == RT.myid ? 0 : pid), capacity, out), pid)
    NEXT_CHANNEL[] += 1
    RemoteChannel{T}(out[], pid, RT.myid, NEXT_CHANNEL[])
end

Base.eltype(::Type{RemoteChannel{T}}) where {T} = eltype(T)
Base.IteratorSize(::Type{<:RemoteChannel}) = Base.SizeUnknown()

# As Distributed's AbstractRemoteRef: made by (whence, id).
Base.hash(r::RemoteChannel, h::UInt) = hash(r.whence, hash(r.id, h))
Base.:(==)(r::RemoteChannel, s::RemoteChannel) = r.whence == s.whence && r.id == s.id

Base.show(io::IO, rc::RemoteChannel{T}) where {T} =
    print(io, "RemoteChannel{", T, "}(", rc.where, ", ", rc.whence, ", ", rc.id, ")")

"Releases the library handle (idempotent; never blocks: safe from a finalizer)."
release!(rc::RemoteChannel) = CAPI.free_once!(CAPI.cluster_channel_free, rc)

@inline function channel_handle(rc::RemoteChannel)
    h = rc.handle
    h == C_NULL && throw(ArgumentError("RemoteChannel: $rc was released"))
    h
end

# ------------------------------------------------------------- errors

"""
The exception Distributed gives for a failed operation on `rc`: raised on
the owner, it reaches another process wrapped in a `RemoteException`.
"""
function channel_exception(err::CAPI.ClusterError, rc::RemoteChannel)
    st = err.status
    ex = if st == CAPI.CLUSTER_ERR_CHANNEL_CLOSED
        InvalidStateException("Channel is closed.", :closed)
    elseif st == CAPI.CLUSTER_ERR_INVALID_ARGUMENT && occursin("unbuffered", err.msg)
        ErrorException("`fetch` is not supported on an unbuffered Channel.")
    else
        return library_exception(err, rc.where, true)
    end
    owner_exception(ex, rc)
end

owner_exception(ex, rc::RemoteChannel) =
    rc.where == myid_or_zero() ? ex : RemoteException(rc.where, CapturedException(ex, Any[]))

@noinline throw_channel(st::Int32, rc::RemoteChannel) = throw(channel_exception(CAPI.last_error(st), rc))

# ------------------------------------------------------------- waiting

"""
    await_channel_op(rc, start) -> Vector{UInt8}

Starts an operation of `rc` (`start(handle, out)` returns a status and a
future) and waits for it in this task: its value (the element of a take),
or the Distributed exception of its failure. The future is freed on the way
out, which withdraws an operation interrupted while it waited.
"""
@inline function await_channel_op(start::F, rc::RemoteChannel) where {F}
    out = Ref{Ptr{Cvoid}}(C_NULL)
    st = start(channel_handle(rc), out)
    st == CAPI.CLUSTER_OK || throw_channel(st, rc)
    h = out[]
    try
        wait_channel_future(h, rc.where)
        data = Ref{Ptr{UInt8}}(C_NULL)
        len = Ref{Csize_t}(0)
        st = CAPI.cluster_future_fetch(h, 0, data, len)
        st == CAPI.CLUSTER_OK || throw_channel(st, rc)
        n = Int(len[])
        return n == 0 ? UInt8[] : copy(unsafe_wrap(Array, data[], n))
    finally
        CAPI.cluster_future_free(h)
    end
end

"Waits for the library future `h` of an operation on a channel kept by `owner`."
function wait_channel_future(h::Ptr{Cvoid}, owner::Int)
    handle_isready(h) && (count!(STAT_READY); return)
    if RT.spin_ns > 0
        # Kept elsewhere: this thread reads the owner's connection (no
        # wake-up of a library thread). Kept here: a short spin while a
        # library thread serves the put or take of another process.
        drive_handle(h) && (count!(STAT_DRIVEN); return)
    end
    count!(STAT_PARKED)
    id = Ref{UInt64}(0)
    CAPI.check(CAPI.cluster_future_id(h, id))
    park_until_ready(h, id[])
end

"`drive_ready` for a future handle held by this task alone."
drive_handle(h::Ptr{Cvoid}) = drive_slices(() -> h, () -> handle_isready(h))

# ------------------------------------------------------------- elements

"An element's bytes: the reply encoding of `v` (wire.jl)."
encode_element(@nospecialize(v)) = encode_ok(v)

function decode_element(bytes::Vector{UInt8})
    io = IOBuffer(bytes)
    tag = read(io, UInt8)
    tag == TAG_OK_FAST && return read_value(io)
    tag == TAG_OK || error("LibCluster: a channel element with tag $tag")
    # A Serializer of its own: the putter is not known, so no per-sender
    # table of known objects applies.
    Base.invokelatest(deserialize_element, io)
end

deserialize_element(io::IO) = deserialize(Serializer(io))

# ------------------------------------------------------------- operations

"""
    put!(rc::RemoteChannel, v) -> rc

Puts `v` (converted to the element type, as `Channel` does) into the
channel, waiting while it is full (an unbuffered one: until a taker takes
it). A closed channel throws `InvalidStateException` (in a
`RemoteException` from another process than the owner, as Distributed).
"""
function Base.put!(rc::RemoteChannel{T}, v) where {T}
    x = try
        convert(eltype(T), v)
    catch err
        throw(owner_exception(err, rc))
    end
    io = encode_element(x)
    GC.@preserve io await_channel_op(rc) do h, out
        CAPI.cluster_channel_put_async(h, pointer(io.data), Csize_t(io.size), out)
    end
    rc
end

"""
    take!(rc::RemoteChannel)

Removes and returns the first element, waiting while there is none. Once
the channel is closed and empty: `InvalidStateException` (wrapped as
`put!`'s); the owner's death: `ProcessExitedException(owner)`.
"""
function Base.take!(rc::RemoteChannel{T}) where {T}
    b = await_channel_op(CAPI.cluster_channel_take_async, rc)
    decode_element(b)::eltype(T)
end

"""
    fetch(rc::RemoteChannel)

The first element, left in the channel, waiting while there is none.
"""
function Base.fetch(rc::RemoteChannel{T}) where {T}
    b = await_channel_op(CAPI.cluster_channel_fetch_async, rc)
    decode_element(b)::eltype(T)
end

"""
    wait(rc::RemoteChannel) -> rc

Waits until an element is there, taking nothing.
"""
function Base.wait(rc::RemoteChannel)
    await_channel_op(CAPI.cluster_channel_wait_async, rc)
    rc
end

"The channel's state: elements available, capacity, open (no round trip when kept here)."
function channel_state(rc::RemoteChannel)
    s = Ref(CAPI.ChannelState(0, 0, false))
    if rc.where == RT.myid
        st = CAPI.cluster_channel_query(channel_handle(rc), s)
        st == CAPI.CLUSTER_OK || throw_channel(st, rc)
        return s[]
    end
    b = await_channel_op(CAPI.cluster_channel_query_async, rc)
    st = GC.@preserve b CAPI.cluster_channel_state_decode(pointer(b), Csize_t(length(b)), s)
    st == CAPI.CLUSTER_OK || throw_channel(st, rc)
    s[]
end

"Whether an element is there (a `take!` would not wait); takes nothing."
Base.isready(rc::RemoteChannel) = channel_state(rc).n_avail > 0

"Whether no element is there; takes nothing."
Base.isempty(rc::RemoteChannel) = channel_state(rc).n_avail == 0

"Whether the channel is open (a closed one may still hold elements)."
Base.isopen(rc::RemoteChannel) = channel_state(rc).open

"""
    close(rc::RemoteChannel)

Closes the channel: waiting and later `put!`s fail; what is buffered can
still be taken, then `take!`, `fetch` and `wait` fail.
"""
function Base.close(rc::RemoteChannel)
    await_channel_op(CAPI.cluster_channel_close_async, rc)
    nothing
end

"""
    bind(rc::RemoteChannel, pid::Integer) -> rc

Ties the channel to process `pid` (a producer), as `bind(c::Channel, task)`
ties a `Channel` to a task: the channel closes when `pid` exits or dies, so
consumers waiting on `take!` fail with the closed-channel error instead of
hanging. Bound to a process already gone, it closes at once. A channel may
be bound to several processes.
"""
function Base.bind(rc::RemoteChannel, pid::Integer)
    await_channel_op(rc) do h, out
        CAPI.cluster_channel_bind_async(h, Int32(pid), out)
    end
    rc
end

"As Distributed's (Julia 1.8+): takes until the channel is closed and empty."
function Base.iterate(rc::RemoteChannel, state = nothing)
    try
        return (take!(rc), nothing)
    catch e
        if e isa InvalidStateException && e.state === :closed ||
           e isa RemoteException && e.captured.ex isa InvalidStateException && e.captured.ex.state === :closed
            return nothing
        end
        rethrow()
    end
end

"""
    LibCluster.channel_count() -> Int

How many channels this process keeps (for references held here or in any
other process): 0 once every reference to them is gone.
"""
function channel_count()
    n = Ref{Csize_t}(0)
    CAPI.check(CAPI.cluster_channel_count(context(), n))
    Int(n[])
end

# ------------------------------------------------ passing channels on

"A reference another process imports (once)."
function export_channel(rc::RemoteChannel)
    h = channel_handle(rc)
    if rc.where == RT.myid
        r = Ref(CAPI.ChannelRef(0, 0))
        st = CAPI.cluster_channel_export(h, r)
        st == CAPI.CLUSTER_OK || throw_channel(st, rc)
        return r[]
    end
    # A round trip to the owner: this task waits for it.
    b = await_channel_op(CAPI.cluster_channel_export_async, rc)
    length(b) == 12 || error("LibCluster: a channel reference of $(length(b)) bytes")
    CAPI.ChannelRef(ltoh(reinterpret(Int32, b[1:4])[1]), ltoh(reinterpret(UInt64, b[5:12])[1]))
end

function Serialization.serialize(s::AbstractSerializer, rc::RemoteChannel)
    r = export_channel(rc)
    Serialization.serialize_type(s, typeof(rc), false)
    serialize(s, (rc.where, rc.whence, rc.id, Int(r.owner), r.id))
end

function Serialization.deserialize(s::AbstractSerializer, ::Type{RemoteChannel{T}}) where {T}
    where, whence, id, owner, refid = deserialize(s)
    r = Ref(CAPI.ChannelRef(Int32(owner), UInt64(refid)))
    out = Ref{Ptr{Cvoid}}(C_NULL)
    check_call(CAPI.cluster_channel_import(context(), r, out), owner)
    RemoteChannel{T}(out[], where, whence, id)
end

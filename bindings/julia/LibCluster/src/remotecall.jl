# Remote calls of Julia functions (serialized) and of registered functions by
# name (raw bytes, for C workers and C callers).

# The functions every LibCluster process registers (see serve.jl).
const CALL_FN = "LibCluster.call"     # run f(args...; kwargs...), reply its value
const DO_FN = "LibCluster.do"         # run it, reply nothing, print failures there

@inline function check_pid(pid::Integer)
    pid >= 1 || throw(ErrorException("no process with id $pid exists"))
    ENFORCE_MASTER_WORKER[] && pid != 1 && pid != RT.myid && throw(master_worker_refusal(pid))
    nothing
end

# The library's words for the same refusal (when it enforces the topology).
@noinline master_worker_refusal(pid) =
    ErrorException("worker $(RT.myid) cannot call worker $pid: topology is master_worker")

"Sends `io`'s bytes as a call of `name` on `pid`; returns the new future handle."
function send_call(ctx::Ptr{Cvoid}, pid::Integer, name::String, io::IOBuffer)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    st = GC.@preserve io CAPI.cluster_remotecall(ctx, Int32(pid), name, pointer(io.data), Csize_t(io.size), out)
    check_call(st, pid)
    sent(pid, io)
    out[]
end

"After a message went out: a closure type it carried is known there from now on."
@inline function sent(pid::Integer, io::IOBuffer)
    # MSG_CLOSURE, number (8 bytes), has_type
    if io.size >= 10 && @inbounds(io.data[1]) == MSG_CLOSURE && @inbounds(io.data[10]) == 0x01
        closure_sent(pid, ltoh(reinterpret(UInt64, io.data[2:9])[1]))
    end
    nothing
end

"""
    remotecall(f, pid, args...; kwargs...) -> Future

Calls `f(args...; kwargs...)` on process `pid` and returns a [`Future`](@ref)
at once. `f` may be any function, including an anonymous function or a
closure; it and the arguments travel by `Serialization`. Calls to one
process run there in the order they were made.
"""
function remotecall(@nospecialize(f), pid::Integer, @nospecialize(args...); kwargs...)
    check_pid(pid)
    ctx = context()
    io = encode_call(pid, f, args, kwargs)
    h = send_call(ctx, pid, CALL_FN, io)
    Future(h, pid, RT.myid)
end

"""
    remotecall_fetch(f, pid, args...; kwargs...)

`fetch(remotecall(f, pid, args...; kwargs...))` in one round trip: the value,
or a `RemoteException` / `ProcessExitedException`.
"""
function remotecall_fetch(@nospecialize(f), pid::Integer, @nospecialize(args...); kwargs...)
    check_pid(pid)
    ctx = context()
    io = encode_call(pid, f, args, kwargs)
    # A Future of our own, released here: no finalizer to register.
    fut = Future(send_call(ctx, pid, CALL_FN, io), pid, RT.myid; finalize = false)
    try
        return fetch(fut)
    finally
        release!(fut)
    end
end

"""
    remotecall_wait(f, pid, args...; kwargs...) -> Future

Calls and waits for completion without moving the value; throws the remote
error if the call failed.
"""
function remotecall_wait(@nospecialize(f), pid::Integer, @nospecialize(args...); kwargs...)
    wait(remotecall(f, pid, args...; kwargs...))
end

"""
    remote_do(f, pid, args...; kwargs...) -> nothing

Fire and forget: runs `f(args...; kwargs...)` on `pid`. Nothing comes back; a
failure is printed on that process's standard error.
"""
function remote_do(@nospecialize(f), pid::Integer, @nospecialize(args...); kwargs...)
    check_pid(pid)
    ctx = context()
    io = encode_call(pid, f, args, kwargs)
    st = GC.@preserve io CAPI.cluster_remote_do(ctx, Int32(pid), DO_FN, pointer(io.data), Csize_t(io.size))
    check_call(st, pid)
    sent(pid, io)
    nothing
end

# ------------------------------------------------------------- by name

const RawBytes = Union{AbstractVector{UInt8},AbstractString}

function with_bytes(f, bytes::RawBytes)
    b = bytes isa Vector{UInt8} ? bytes : bytes isa AbstractString ? Vector{UInt8}(String(bytes)) : Vector{UInt8}(bytes)
    GC.@preserve b f(pointer(b), Csize_t(length(b)))
end

"""
    remotecall_raw(pid, name, bytes=UInt8[]) -> Future

Calls the function registered as `name` on process `pid` (by
`cluster_register` in a C worker, or [`LibCluster.register`](@ref)) with the
raw argument bytes. `fetch` gives the reply bytes as a `Vector{UInt8}`.
"""
function remotecall_raw(pid::Integer, name::AbstractString, bytes::RawBytes = UInt8[])
    check_pid(pid)
    ctx = context()
    out = Ref{Ptr{Cvoid}}(C_NULL)
    st = with_bytes(bytes) do p, n
        CAPI.cluster_remotecall(ctx, Int32(pid), String(name), p, n, out)
    end
    check_call(st, pid)
    Future(out[], pid, RT.myid; raw = true)
end

"""
    remotecall_fetch_raw(pid, name, bytes=UInt8[]) -> Vector{UInt8}

Calls the registered function `name` on `pid` with raw bytes and returns the
reply bytes. Its failure (e.g. `name` not registered there) throws a
`RemoteException` wrapping an `ErrorException` with the remote message.
"""
remotecall_fetch_raw(pid::Integer, name::AbstractString, bytes::RawBytes = UInt8[]) =
    fetch(remotecall_raw(pid, name, bytes))::Vector{UInt8}

"Fire and forget call of the registered function `name` on `pid` with raw bytes."
function remote_do_raw(pid::Integer, name::AbstractString, bytes::RawBytes = UInt8[])
    check_pid(pid)
    ctx = context()
    st = with_bytes(bytes) do p, n
        CAPI.cluster_remote_do(ctx, Int32(pid), String(name), p, n)
    end
    check_call(st, pid)
    nothing
end

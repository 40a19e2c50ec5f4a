# What LibCluster puts in libcluster's byte payloads. Everything Julia
# travels through `Serialization`:
#
#   call   = MSG_SERIALIZED * serialize(Any[globals, f, args, kwargs])
#          | MSG_FAST * fast call (fastwire.jl: named function, plain values)
#   reply  = TAG_OK  * serialize(value)
#          | TAG_OK_FAST * fast value
#          | TAG_ERR * serialize(type name, text, backtrace, exception)
#                                                       (-> RemoteException)
#
# `globals` carries the `Main` globals an anonymous function refers to, as
# Distributed does: `a = 1; remotecall_fetch(() -> a + 1, 2)` works, and a
# global is sent again only when it changed since it was last sent to that
# process.

const TAG_OK = 0x00
const TAG_ERR = 0x01
const TAG_OK_FAST = 0x02

const MSG_SERIALIZED = 0x00
const MSG_FAST = 0x01

# ------------------------------------------------------------------ calls

# The message is a Vector{Any}: one compiled serializer method for every call,
# whatever the types of the function and arguments.
function encode_call(pid::Integer, @nospecialize(f), @nospecialize(args::Tuple), @nospecialize(kwargs))
    ref = function_ref(f)
    if ref !== nothing && isempty(kwargs) && fast_args(args)
        io = scratch()
        write(io, MSG_FAST)
        write_fast_call(io, ref, args)
        return io
    end
    io = IOBuffer()
    if ref === nothing && closure_type(f) !== nothing
        write_closure_call(io, Int(pid), f, args, kwargs)
        return io
    end
    write(io, MSG_SERIALIZED)
    # Behind a dynamic call: code that uses only the fast encodings then
    # never compiles Serialization's machinery.
    Base.invokelatest(serialize_call, io, pid, f, args, kwargs)
    io
end

# Object numbers (of anonymous types and methods) are per sending process:
# the receiver keeps what it deserialized from each sender, so that sending
# the same closure again reuses the type and its compiled code instead of
# making (and compiling) a new one each time.
const KNOWN_OBJECTS = Dict{Int,Dict{UInt64,Any}}()

# Guards KNOWN_OBJECTS, GLOBALS_SENT and the closure tables for callers on several threads.
const SERIAL_LOCK = ReentrantLock()

function serializer_from(pid::Integer, io::IO)
    s = Serializer(io)
    if hasfield(typeof(s), :known_object_data)
        s.known_object_data = get!(() -> Dict{UInt64,Any}(), KNOWN_OBJECTS, Int(pid))
    end
    s
end

function serialize_call(io::IO, pid::Integer, @nospecialize(f), @nospecialize(args::Tuple), @nospecialize(kwargs))
    kw = isempty(kwargs) ? nothing : collect(Pair{Symbol,Any}, kwargs)
    globs = lock(() -> globals_to_send(pid, f, args), SERIAL_LOCK)
    msg = Any[globs, f, Any[args...], kw]
    serialize(Serializer(io), msg)
end

"Deserializes a call from process `caller`: defines the globals it carries, returns `(f, args, kwargs)`."
function decode_call(bytes::AbstractVector{UInt8}, caller::Integer = 0)
    io = IOBuffer(bytes)
    kind = read(io, UInt8)
    if kind == MSG_FAST
        f, args = read_fast_call(io)
        return f, args, ()
    elseif kind == MSG_CLOSURE
        return read_closure_call(io, Int(caller))
    end
    Base.invokelatest(deserialize_call, io, Int(caller))
end

function deserialize_call(io::IO, caller::Int)
    msg = lock(() -> deserialize(serializer_from(caller, io)), SERIAL_LOCK)::Vector{Any}
    globs = msg[1]
    globs === nothing || define_globals(globs)
    kw = msg[4]
    msg[2], (msg[3]::Vector{Any}), kw === nothing ? () : kw
end

# ------------------------------------------------------------- closures
#
# An anonymous function or closure travels as its type's number; the type
# itself (with its code) only the first time it goes to a process, as
# Distributed's ClusterSerializer sends a TypeName once per worker. Then
# its captured fields and the arguments follow, in the fast encoding when
# they have one and no Main global has to go with them:
#
#   MSG_CLOSURE * number::UInt64 * has_type::UInt8 [* length::UInt32 * serialize(type)]
#               * (REST_FAST * fields * args | REST_SERIALIZED * serialize(Any[globals, fields, args, kwargs]))

const MSG_CLOSURE = 0x02
const REST_SERIALIZED = 0x00
const REST_FAST = 0x01

# Sender: a number for each closure type sent (this process's numbering),
# and which processes have which type.
const CLOSURE_NUMBERS = IdDict{Any,UInt64}()
const CLOSURE_SENT = Set{Tuple{Int,UInt64}}()
# Receiver: (sender, number) => the type, or why it could not be made here.
const CLOSURE_TYPES = Dict{Tuple{Int,UInt64},Any}()

"A closure type that could not be made here (yet): tried again on each call, e.g. once its module is loaded."
struct UnknownType
    err::Any
    bytes::Vector{UInt8}
end

"Whether a symbol's name starts with '#' (the hidden names of function types)."
hidden_name(s::Symbol) = unsafe_load(Base.unsafe_convert(Ptr{UInt8}, s)) == UInt8('#')

"""
The type of `f` if it is a function of a hidden type: an anonymous function
or a closure (`encode_call` first checks it is not a named function of its
module), which travels by number.
"""
function closure_type(@nospecialize(f))
    f isa Function || return nothing
    T = typeof(f)
    T isa DataType || return nothing
    hidden_name(T.name.name) || return nothing
    T
end

"Writes a call of the closure `f` to process `pid` (`MSG_CLOSURE`)."
function write_closure_call(io::IOBuffer, pid::Int, @nospecialize(f), @nospecialize(args::Tuple), @nospecialize(kwargs))
    T = typeof(f)
    fields = nfields(f) == 0 ? () : ntuple(i -> getfield(f, i), nfields(f))
    lock(SERIAL_LOCK)
    number, known, globs = try
        n = get(CLOSURE_NUMBERS, T, UInt64(0))
        n == 0 && (n = CLOSURE_NUMBERS[T] = UInt64(length(CLOSURE_NUMBERS) + 1))
        (n, pid > 0 && (pid, n) in CLOSURE_SENT, globals_to_send(pid, f, args))
    finally
        unlock(SERIAL_LOCK)
    end
    write(io, MSG_CLOSURE)
    write(io, number)
    if known
        write(io, 0x00)
    else
        write(io, 0x01)
        # Behind dynamic calls: Serialization compiles only when used.
        tbytes = Base.invokelatest(serialize_to_bytes, T)::Vector{UInt8}
        write(io, UInt32(length(tbytes)))
        write(io, tbytes)
    end
    if globs === nothing && isempty(kwargs) && fast_args(fields) && fast_args(args)
        write(io, REST_FAST)
        write_args(io, fields)
        write_args(io, args)
    else
        write(io, REST_SERIALIZED)
        Base.invokelatest(serialize_rest, io, globs, fields, args, kwargs)
    end
    nothing
end

function serialize_to_bytes(@nospecialize(x))
    io = IOBuffer()
    serialize(Serializer(io), x)
    take!(io)
end

function serialize_rest(io::IO, globs, @nospecialize(fields::Tuple), @nospecialize(args::Tuple), @nospecialize(kwargs))
    kw = isempty(kwargs) ? nothing : collect(Pair{Symbol,Any}, kwargs)
    serialize(Serializer(io), Any[globs, Any[fields...], Any[args...], kw])
end

"""
    closure_sent(pid, number)

After a call carrying closure type `number` was sent to `pid`: that process
has the type from now on (marked only once the message is out, so that a
call sent meanwhile by another task still carries the type).
"""
function closure_sent(pid::Integer, number::UInt64)
    pid > 0 && lock(() -> push!(CLOSURE_SENT, (Int(pid), number)), SERIAL_LOCK)
    nothing
end

function read_closure_call(io::IOBuffer, caller::Int)
    number = read(io, UInt64)
    key = (caller, number)
    lock(SERIAL_LOCK)
    T = try
        get(CLOSURE_TYPES, key, nothing)
    finally
        unlock(SERIAL_LOCK)
    end
    tbytes = read(io, UInt8) == 0x01 ? read(io, Int(read(io, UInt32))) : nothing
    if T === nothing || T isa UnknownType
        tbytes === nothing && T isa UnknownType && (tbytes = T.bytes)
        tbytes === nothing && error("LibCluster: process $caller sent a closure of a type it never sent here (number $number)")
        T = try
            Base.invokelatest(deserialize_type, tbytes, caller)
        catch err
            UnknownType(err, tbytes)
        end
        lock(() -> (CLOSURE_TYPES[key] = T), SERIAL_LOCK)
        T isa UnknownType && throw(T.err)
    end
    if read(io, UInt8) == REST_FAST
        fields = read_args(io)
        args = read_args(io)
        kw = ()
    else
        msg = Base.invokelatest(deserialize_rest, io, caller)::Vector{Any}
        globs = msg[1]
        globs === nothing || define_globals(globs)
        fields = msg[2]::Vector{Any}
        args = msg[3]::Vector{Any}
        kw = msg[4] === nothing ? () : msg[4]
    end
    make_closure(T::DataType, fields), args, kw
end

deserialize_type(bytes::Vector{UInt8}, caller::Int) =
    lock(() -> deserialize(serializer_from(caller, IOBuffer(bytes))), SERIAL_LOCK)::DataType

deserialize_rest(io::IO, caller::Int) = lock(() -> deserialize(serializer_from(caller, io)), SERIAL_LOCK)

"An instance of the closure type `T` with these captured values."
function make_closure(T::DataType, fields::Vector{Any})
    isdefined(T, :instance) && return T.instance
    length(fields) == fieldcount(T) || error("LibCluster: a closure of type $T with $(length(fields)) fields")
    ccall(:jl_new_structv, Any, (Any, Ptr{Any}, UInt32), T, fields, length(fields))
end

# ---------------------------------------------------------------- replies

function encode_ok(@nospecialize(v))
    if fast_value(v)
        io = scratch()
        write(io, TAG_OK_FAST)
        write_value(io, v)
    else
        io = IOBuffer()
        write(io, TAG_OK)
        Base.invokelatest(serialize_value, io, v)
    end
    io
end

# The buffer of thread 1 for messages written without a task switch (the
# compact encodings) and sent at once: one buffer, not one per message.
# Whoever gets it must be done with it before the task can yield.
const SCRATCH = Ref{Union{Nothing,IOBuffer}}(nothing)
const SCRATCH_MAX = 1 << 16

function scratch()
    Threads.threadid() == 1 || return IOBuffer()
    io = SCRATCH[]
    if io === nothing || length(io.data) > SCRATCH_MAX
        io = SCRATCH[] = IOBuffer(; sizehint = 256)
    end
    truncate(io, 0)
    io
end

serialize_value(io::IO, @nospecialize(v)) = serialize(Serializer(io), v)

"""
The error reply for exception `e` with backtrace `bt`; never throws. As
Distributed's `ClusterSerializer` does for a `CapturedException`, the
exception's type name (and here its text) come first, then the backtrace,
then the exception: a receiver that cannot deserialize the exception (its
type is not defined there) still has the rest.
"""
function encode_err(e, bt)
    for attempt in 1:3
        io = IOBuffer()
        write(io, TAG_ERR)
        try
            ex = attempt == 1 ? e : ErrorException(safe_showerror(e))
            frames = attempt == 3 ? Any[] : portable_backtrace(bt)
            s = Serializer(io)
            serialize(s, string(typeof(e)))
            serialize(s, safe_showerror(e))
            serialize(s, frames)
            serialize(s, ex)
            return io
        catch
        end
    end
    io = IOBuffer()
    write(io, TAG_ERR)
    s = Serializer(io)
    foreach(x -> serialize(s, x), ("ErrorException", "remote error (unprintable)", Any[], ErrorException("remote error (unprintable)")))
    io
end

safe_showerror(e) = try
    sprint(showerror, e)
catch
    string(typeof(e))
end

"""
    decode_reply(bytes, pid) -> (ok::Bool, value_or_exception)

Reads a reply written by `encode_ok`/`encode_err` from process `pid`.
"""
function decode_reply(bytes::AbstractVector{UInt8}, pid::Integer)
    isempty(bytes) && return (true, nothing)
    io = IOBuffer(bytes)
    tag = read(io, UInt8)
    tag == TAG_OK_FAST && return (true, read_value(io))
    Base.invokelatest(decode_serialized_reply, io, tag, Int(pid))::Tuple{Bool,Any}
end

function decode_serialized_reply(io::IO, tag::UInt8, pid::Int)
    tag == TAG_ERR && return (false, lock(() -> decode_err(serializer_from(pid, io), pid), SERIAL_LOCK))
    v = try
        lock(() -> deserialize(serializer_from(pid, io)), SERIAL_LOCK)
    catch err
        # e.g. the result's type is not defined here
        return (false, RemoteException(pid, CapturedException(
            ErrorException("the result from process $pid cannot be deserialized here: " * safe_showerror(err)),
            Any[])))
    end
    (true, v)
end

"""
The `RemoteException` of an error reply from `pid`. What cannot be
deserialized here is recovered as Distributed does: a `CompositeException`
of the remote error as text (with its type name) and of the local failure,
e.g. the `UndefVarError` of a type this process does not have.
"""
function decode_err(s::AbstractSerializer, pid::Int)
    typ = deserialize(s)::String
    text = deserialize(s)::String
    bt = try
        deserialize(s)::Vector{Any}
    catch err
        return RemoteException(pid, CapturedException(CompositeException(Any[
            CapturedException(undeserializable(pid, typ, text, false), Any[]),
            capture(err, catch_backtrace())]), Any[]))
    end
    ex = try
        deserialize(s)
    catch err
        return RemoteException(pid, CapturedException(CompositeException(Any[
            CapturedException(undeserializable(pid, typ, text, true), bt),
            capture(err, catch_backtrace())]), Any[]))
    end
    RemoteException(pid, CapturedException(ex, bt))
end

# Distributed's text (clusterserialize.jl, `original_ex`), with the remote
# error's own text added.
undeserializable(pid, typ, text, remote_bt) =
    ErrorException("Error deserializing a remote exception from worker $pid\n" *
                   "Remote(original) exception of type $typ\n" *
                   "Remote(original) exception text: $text\n" *
                   (remote_bt ? "Remote" : "Local") * " stacktrace : ")

# ----------------------------------------------------------- Main globals

const GLOBALS_SENT = Dict{Tuple{Int,Symbol},Tuple{UInt64,UInt64}}()

# Main globals this process bound to its own view of something every
# process has its own of (LibCluster.PTools' `pmap_shm_create`: each local
# process binds the name to its mapping of the segment): name => the value
# bound. A closure using one never carries it; the receiver's own binding
# is used. Changed under SERIAL_LOCK.
const LOCAL_GLOBALS = Dict{Symbol,Any}()

function forget_process(pid::Int)
    lock(SERIAL_LOCK) do
        filter!(kv -> first(kv)[1] != pid, GLOBALS_SENT)
        delete!(KNOWN_OBJECTS, pid)
        filter!(k -> k[1] != pid, CLOSURE_SENT)
        filter!(kv -> first(kv)[1] != pid, CLOSURE_TYPES)
    end
end

is_main_anon(@nospecialize(T)) =
    T isa DataType && T <: Function && T.name.module === Main && hidden_name(T.name.name) && !is_named_function(T)

"""
Whether `T` is the type of a named function (`f`'s type is `#f`, a hidden
name too): its one instance is what its name holds in its module. Such a
function is serialized by name, so its globals never travel with it (as
Distributed).
"""
function is_named_function(@nospecialize(T))
    isdefined(T, :instance) || return false
    f = T.instance
    n = nameof(f)
    m = T.name.module
    isdefined(m, n) && getfield(m, n) === f
end

"""
    globals_to_send(pid, f, args) -> Union{Nothing,Vector}

The `Main` globals referred to by `f` (and by function arguments) when they
are anonymous functions defined in `Main`, as Distributed sends them: every
value, types, modules and named functions included, and what an anonymous
function held in such a global refers to in turn. `(name, isconst, value)`
for each that process `pid` has not received with this value yet (bits
values, named functions among them, are sent every time, as Distributed).
"""
function globals_to_send(pid::Integer, @nospecialize(f), @nospecialize(args::Tuple))
    syms = nothing
    syms = add_static_globals!(syms, typeof(f))
    for a in args
        a isa Function && (syms = add_static_globals!(syms, typeof(a)))
    end
    syms === nothing && return nothing
    out = Tuple{Symbol,Bool,Any}[]
    i = 0
    while i < length(syms)          # grows while we go
        i += 1
        sym = syms[i]
        isdefined(Main, sym) || continue
        v = getfield(Main, sym)
        v isa Function && add_static_globals!(syms, typeof(v))
        haskey(LOCAL_GLOBALS, sym) && LOCAL_GLOBALS[sym] === v && continue
        if pid > 0 && !isbits(v)
            stamp = (UInt64(objectid(v)), UInt64(hash(v)))
            get(GLOBALS_SENT, (Int(pid), sym), nothing) == stamp && continue
            GLOBALS_SENT[(Int(pid), sym)] = stamp
        end
        push!(out, (sym, isconst(Main, sym), v isa Module ? ModuleRef(v) : v))
    end
    isempty(out) ? nothing : out
end

# The Main globals each anonymous function type's code refers to (its own
# methods' and those of the anonymous functions it makes), found once per
# type: the code of a type does not change.
const STATIC_GLOBALS = IdDict{Any,Vector{Symbol}}()
const NO_SYMBOLS = Symbol[]

function static_globals(@nospecialize(T))
    is_main_anon(T) || return NO_SYMBOLS
    get!(STATIC_GLOBALS, T) do
        syms = Symbol[]
        collect_main_globals!(syms, Set{Any}(), T)
        syms
    end
end

"Appends the static globals of `T` not yet in `syms` (made when needed)."
function add_static_globals!(syms::Union{Nothing,Vector{Symbol}}, @nospecialize(T))
    new = static_globals(T)
    isempty(new) && return syms
    syms === nothing && (syms = Symbol[])
    for s in new
        s in syms || push!(syms, s)
    end
    syms
end

"""
A module held in a global, by name: the receiver looks it up among its
loaded modules, and names the package to load when it is not there (where
`Serialization` would fail with a `KeyError`).
"""
struct ModuleRef
    path::Vector{Symbol}
    uuid::String
end

function ModuleRef(m::Module)
    uuid = Base.PkgId(Base.moduleroot(m)).uuid
    ModuleRef(collect(Symbol, fullname(m)), uuid === nothing ? "" : string(uuid))
end

function resolve(r::ModuleRef)
    m = root_module_named(r.path[1], r.uuid)
    for p in r.path[2:end]
        m = getfield(m, p)::Module
    end
    m
end

function collect_main_globals!(syms::Vector{Symbol}, seen::Set{Any}, @nospecialize(T))
    is_main_anon(T) || return
    T in seen && return
    push!(seen, T)
    ms = try
        Base.MethodList(T.name.mt)
    catch
        return
    end
    for m in ms
        ci = try
            Base.uncompressed_ast(m)
        catch
            continue
        end
        scan_code!(syms, seen, ci.code)
    end
end

function scan_code!(syms, seen, x)
    if x isa GlobalRef
        x.mod === Main || return
        s = x.name
        isdefined(Main, s) || return
        if startswith(String(s), "#")
            v = getfield(Main, s)
            v isa DataType && collect_main_globals!(syms, seen, v)
            v isa Function && collect_main_globals!(syms, seen, typeof(v))
        elseif Base.binding_module(Main, s) === Main && !(s in syms)
            push!(syms, s)
        end
    elseif x isa Expr
        for a in x.args
            scan_code!(syms, seen, a)
        end
    elseif x isa AbstractVector
        for a in x
            scan_code!(syms, seen, a)
        end
    end
    nothing
end

function define_globals(globs)
    for (sym, isc, v) in globs
        v isa ModuleRef && (v = resolve(v))
        if isdefined(Main, sym) && (isc || isconst(Main, sym))
            isequal(getfield(Main, sym), v) || @warn "Cannot transfer global variable $sym; it already has a value."
            continue
        end
        if isc
            Core.eval(Main, Expr(:const, Expr(:(=), sym, QuoteNode(v))))
        else
            Core.eval(Main, Expr(:global, Expr(:(=), sym, QuoteNode(v))))
        end
    end
end

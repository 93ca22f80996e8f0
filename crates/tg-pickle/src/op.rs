//! The pickle opcode table (protocols 0–5) and a decoder for one opcode at a time.
//!
//! Operand decoding mirrors CPython's C unpickler (`Modules/_pickle.c`), the implementation
//! `pickle.load` actually runs, rather than `pickletools.genops`: line operands end at `\n`,
//! lengths are little-endian, and `FRAME` only announces bytes; it does not fence them (the C
//! unpickler prefetches the frame and then keeps reading opcodes past its end, so we do too).

/// Every opcode CPython's unpickler understands, with its byte value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[expect(missing_docs, reason = "the variants are pickle's own opcode names")]
pub enum Opcode {
    Mark = b'(' as isize,
    Stop = b'.' as isize,
    Pop = b'0' as isize,
    PopMark = b'1' as isize,
    Dup = b'2' as isize,
    Float = b'F' as isize,
    Int = b'I' as isize,
    BinInt = b'J' as isize,
    BinInt1 = b'K' as isize,
    Long = b'L' as isize,
    BinInt2 = b'M' as isize,
    None = b'N' as isize,
    PersId = b'P' as isize,
    BinPersId = b'Q' as isize,
    Reduce = b'R' as isize,
    String = b'S' as isize,
    BinString = b'T' as isize,
    ShortBinString = b'U' as isize,
    Unicode = b'V' as isize,
    BinUnicode = b'X' as isize,
    Append = b'a' as isize,
    Build = b'b' as isize,
    Global = b'c' as isize,
    Dict = b'd' as isize,
    EmptyDict = b'}' as isize,
    Appends = b'e' as isize,
    Get = b'g' as isize,
    BinGet = b'h' as isize,
    Inst = b'i' as isize,
    LongBinGet = b'j' as isize,
    List = b'l' as isize,
    EmptyList = b']' as isize,
    Obj = b'o' as isize,
    Put = b'p' as isize,
    BinPut = b'q' as isize,
    LongBinPut = b'r' as isize,
    SetItem = b's' as isize,
    Tuple = b't' as isize,
    EmptyTuple = b')' as isize,
    SetItems = b'u' as isize,
    BinFloat = b'G' as isize,
    Proto = 0x80,
    NewObj = 0x81,
    Ext1 = 0x82,
    Ext2 = 0x83,
    Ext4 = 0x84,
    Tuple1 = 0x85,
    Tuple2 = 0x86,
    Tuple3 = 0x87,
    NewTrue = 0x88,
    NewFalse = 0x89,
    Long1 = 0x8a,
    Long4 = 0x8b,
    BinBytes = b'B' as isize,
    ShortBinBytes = b'C' as isize,
    ShortBinUnicode = 0x8c,
    BinUnicode8 = 0x8d,
    BinBytes8 = 0x8e,
    EmptySet = 0x8f,
    AddItems = 0x90,
    FrozenSet = 0x91,
    NewObjEx = 0x92,
    StackGlobal = 0x93,
    Memoize = 0x94,
    Frame = 0x95,
    ByteArray8 = 0x96,
    NextBuffer = 0x97,
    ReadonlyBuffer = 0x98,
}

impl Opcode {
    /// The opcode for a byte, or `None` for a byte CPython rejects as an invalid load key.
    pub fn from_byte(b: u8) -> Option<Opcode> {
        use Opcode::*;
        Some(match b {
            b'(' => Mark,
            b'.' => Stop,
            b'0' => Pop,
            b'1' => PopMark,
            b'2' => Dup,
            b'F' => Float,
            b'I' => Int,
            b'J' => BinInt,
            b'K' => BinInt1,
            b'L' => Long,
            b'M' => BinInt2,
            b'N' => None,
            b'P' => PersId,
            b'Q' => BinPersId,
            b'R' => Reduce,
            b'S' => String,
            b'T' => BinString,
            b'U' => ShortBinString,
            b'V' => Unicode,
            b'X' => BinUnicode,
            b'a' => Append,
            b'b' => Build,
            b'c' => Global,
            b'd' => Dict,
            b'}' => EmptyDict,
            b'e' => Appends,
            b'g' => Get,
            b'h' => BinGet,
            b'i' => Inst,
            b'j' => LongBinGet,
            b'l' => List,
            b']' => EmptyList,
            b'o' => Obj,
            b'p' => Put,
            b'q' => BinPut,
            b'r' => LongBinPut,
            b's' => SetItem,
            b't' => Tuple,
            b')' => EmptyTuple,
            b'u' => SetItems,
            b'G' => BinFloat,
            0x80 => Proto,
            0x81 => NewObj,
            0x82 => Ext1,
            0x83 => Ext2,
            0x84 => Ext4,
            0x85 => Tuple1,
            0x86 => Tuple2,
            0x87 => Tuple3,
            0x88 => NewTrue,
            0x89 => NewFalse,
            0x8a => Long1,
            0x8b => Long4,
            b'B' => BinBytes,
            b'C' => ShortBinBytes,
            0x8c => ShortBinUnicode,
            0x8d => BinUnicode8,
            0x8e => BinBytes8,
            0x8f => EmptySet,
            0x90 => AddItems,
            0x91 => FrozenSet,
            0x92 => NewObjEx,
            0x93 => StackGlobal,
            0x94 => Memoize,
            0x95 => Frame,
            0x96 => ByteArray8,
            0x97 => NextBuffer,
            0x98 => ReadonlyBuffer,
            _ => return Option::None,
        })
    }

    /// pickletools' upper-case name, used in findings.
    pub fn name(self) -> &'static str {
        use Opcode::*;
        match self {
            Mark => "MARK",
            Stop => "STOP",
            Pop => "POP",
            PopMark => "POP_MARK",
            Dup => "DUP",
            Float => "FLOAT",
            Int => "INT",
            BinInt => "BININT",
            BinInt1 => "BININT1",
            Long => "LONG",
            BinInt2 => "BININT2",
            None => "NONE",
            PersId => "PERSID",
            BinPersId => "BINPERSID",
            Reduce => "REDUCE",
            String => "STRING",
            BinString => "BINSTRING",
            ShortBinString => "SHORT_BINSTRING",
            Unicode => "UNICODE",
            BinUnicode => "BINUNICODE",
            Append => "APPEND",
            Build => "BUILD",
            Global => "GLOBAL",
            Dict => "DICT",
            EmptyDict => "EMPTY_DICT",
            Appends => "APPENDS",
            Get => "GET",
            BinGet => "BINGET",
            Inst => "INST",
            LongBinGet => "LONG_BINGET",
            List => "LIST",
            EmptyList => "EMPTY_LIST",
            Obj => "OBJ",
            Put => "PUT",
            BinPut => "BINPUT",
            LongBinPut => "LONG_BINPUT",
            SetItem => "SETITEM",
            Tuple => "TUPLE",
            EmptyTuple => "EMPTY_TUPLE",
            SetItems => "SETITEMS",
            BinFloat => "BINFLOAT",
            Proto => "PROTO",
            NewObj => "NEWOBJ",
            Ext1 => "EXT1",
            Ext2 => "EXT2",
            Ext4 => "EXT4",
            Tuple1 => "TUPLE1",
            Tuple2 => "TUPLE2",
            Tuple3 => "TUPLE3",
            NewTrue => "NEWTRUE",
            NewFalse => "NEWFALSE",
            Long1 => "LONG1",
            Long4 => "LONG4",
            BinBytes => "BINBYTES",
            ShortBinBytes => "SHORT_BINBYTES",
            ShortBinUnicode => "SHORT_BINUNICODE",
            BinUnicode8 => "BINUNICODE8",
            BinBytes8 => "BINBYTES8",
            EmptySet => "EMPTY_SET",
            AddItems => "ADDITEMS",
            FrozenSet => "FROZENSET",
            NewObjEx => "NEWOBJ_EX",
            StackGlobal => "STACK_GLOBAL",
            Memoize => "MEMOIZE",
            Frame => "FRAME",
            ByteArray8 => "BYTEARRAY8",
            NextBuffer => "NEXT_BUFFER",
            ReadonlyBuffer => "READONLY_BUFFER",
        }
    }

    /// Whether `torch.load(weights_only=True)` accepts this opcode
    /// (`torch/_weights_only_unpickler.py`; everything else raises "Unsupported operand").
    pub fn weights_only_ok(self) -> bool {
        use Opcode::*;
        matches!(
            self,
            Proto
                | Stop
                | Global
                | NewObj
                | Reduce
                | Build
                | Append
                | Appends
                | SetItem
                | SetItems
                | Mark
                | Tuple
                | Tuple1
                | Tuple2
                | Tuple3
                | EmptyTuple
                | EmptyList
                | EmptyDict
                | EmptySet
                | None
                | NewTrue
                | NewFalse
                | BinInt
                | BinInt1
                | BinInt2
                | Long1
                | BinFloat
                | BinUnicode
                | ShortBinString
                | BinPersId
                | BinGet
                | LongBinGet
                | BinPut
                | LongBinPut
        )
    }
}

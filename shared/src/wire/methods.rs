//! The Telegram methods this product sends, and what this version knows of each: its parameters,
//! their types and Telegram's documented bounds, which are required, and how the method counts
//! against Telegram's limits. Parameters not listed here are forwarded as they are (with a
//! warning): Telegram adds send parameters almost every month.
//!
//! The bounds follow the Bot API reference (9.x, with 10.0's relaxations where they widen what is
//! valid). Where the reference gives no bound, only the type is checked.

use std::fmt;

use serde::Serialize;

/// A Telegram method this product sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Method {
    #[serde(rename = "sendMessage")]
    SendMessage,
    #[serde(rename = "sendPhoto")]
    SendPhoto,
    #[serde(rename = "sendVideo")]
    SendVideo,
    #[serde(rename = "sendAnimation")]
    SendAnimation,
    #[serde(rename = "sendAudio")]
    SendAudio,
    #[serde(rename = "sendVoice")]
    SendVoice,
    #[serde(rename = "sendVideoNote")]
    SendVideoNote,
    #[serde(rename = "sendDocument")]
    SendDocument,
    #[serde(rename = "sendSticker")]
    SendSticker,
    #[serde(rename = "sendMediaGroup")]
    SendMediaGroup,
    #[serde(rename = "sendLocation")]
    SendLocation,
    #[serde(rename = "sendVenue")]
    SendVenue,
    #[serde(rename = "sendContact")]
    SendContact,
    #[serde(rename = "sendPoll")]
    SendPoll,
    #[serde(rename = "sendDice")]
    SendDice,
    #[serde(rename = "sendChatAction")]
    SendChatAction,
    #[serde(rename = "copyMessage")]
    CopyMessage,
    #[serde(rename = "copyMessages")]
    CopyMessages,
    #[serde(rename = "forwardMessage")]
    ForwardMessage,
    #[serde(rename = "forwardMessages")]
    ForwardMessages,
    #[serde(rename = "editMessageText")]
    EditMessageText,
    #[serde(rename = "editMessageCaption")]
    EditMessageCaption,
    #[serde(rename = "editMessageMedia")]
    EditMessageMedia,
    #[serde(rename = "editMessageReplyMarkup")]
    EditMessageReplyMarkup,
    #[serde(rename = "deleteMessage")]
    DeleteMessage,
    #[serde(rename = "deleteMessages")]
    DeleteMessages,
    #[serde(rename = "pinChatMessage")]
    PinChatMessage,
    #[serde(rename = "unpinChatMessage")]
    UnpinChatMessage,
    #[serde(rename = "setMessageReaction")]
    SetMessageReaction,
}

/// How a method counts against Telegram's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// It sends this many messages: each counts against the bot's global budget and the chat's.
    Messages(u32),
    /// An edit: it counts against the chat's budget (group limits apply), not the global one.
    ChatOnly,
    /// It sends no message (a chat action, a delete, a pin, a reaction): no budget, but 429
    /// pauses still hold it back.
    Unpaced,
}

impl Pacing {
    /// Messages the call counts against its chat's budget.
    pub fn chat_cost(self) -> u32 {
        match self {
            Pacing::Messages(n) => n,
            Pacing::ChatOnly => 1,
            Pacing::Unpaced => 0,
        }
    }

    /// Messages the call counts against the bot's global (or paid-broadcast) budget.
    pub fn global_cost(self) -> u32 {
        match self {
            Pacing::Messages(n) => n,
            Pacing::ChatOnly | Pacing::Unpaced => 0,
        }
    }
}

/// The type (and Telegram's bounds) of one parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Ty {
    /// An integer id or a public `@username`.
    Chat,
    /// A positive integer (message ids, thread ids).
    Id,
    /// An integer within the range.
    Int(i64, i64),
    /// A live location's period: 60-86400 s, or 0x7FFFFFFF for "until stopped".
    LivePeriod,
    /// A number within the range.
    Float(f64, f64),
    Bool,
    /// Any string.
    Str,
    /// A string of at most this many bytes.
    Bytes(usize),
    /// One of these strings.
    OneOf(&'static [&'static str]),
    /// A text whose length Telegram counts after parsing the markup named by the parameter `mode`.
    Text {
        min: usize,
        max: usize,
        mode: &'static str,
    },
    /// `HTML`, `MarkdownV2` or `Markdown`.
    ParseMode,
    /// A file: a `file_id`, an `https://` URL (when `by_url`), or `attach://<part>` for an upload.
    File {
        by_url: bool,
    },
    /// A file that can only be uploaded: `attach://<part>` (thumbnails).
    Upload,
    /// Telegram's reply markup; only an inline keyboard for edits.
    Markup {
        inline_only: bool,
    },
    /// An array of `MessageEntity`.
    Entities,
    /// An array of 1-100 message ids (strictly increasing for copies and forwards).
    MessageIds {
        increasing: bool,
    },
    /// `sendMediaGroup`'s album: 2-10 `InputMedia` items.
    Album,
    /// One `InputMedia` (`editMessageMedia`).
    InputMedia,
    /// A poll's options: 1-12 `InputPollOption`s (or strings), each 1-100 characters.
    PollOptions,
    /// `ReplyParameters`.
    ReplyParameters,
    /// Any JSON object.
    Object,
    /// An array of `ReactionType`.
    Reactions,
    /// An array of integers.
    IntList,
    /// A parameter this product refuses, with the reason.
    Refused(&'static str),
}

/// One parameter: its name, type, and whether it is required.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Param {
    pub name: &'static str,
    pub ty: Ty,
    pub required: bool,
}

const fn req(name: &'static str, ty: Ty) -> Param {
    Param { name, ty, required: true }
}

const fn opt(name: &'static str, ty: Ty) -> Param {
    Param { name, ty, required: false }
}

/// The most characters Telegram allows in a message text.
pub const MAX_TEXT: usize = 4096;
/// The most characters Telegram allows in a caption.
pub const MAX_CAPTION: usize = 1024;

const TEXT: Ty = Ty::Text { min: 1, max: MAX_TEXT, mode: "parse_mode" };
const CAPTION: Ty = Ty::Text { min: 0, max: MAX_CAPTION, mode: "parse_mode" };
const MARKUP: Ty = Ty::Markup { inline_only: false };
const INLINE_MARKUP: Ty = Ty::Markup { inline_only: true };
const URL_FILE: Ty = Ty::File { by_url: true };
const NON_NEGATIVE: Ty = Ty::Int(0, i32::MAX as i64);
const INLINE: Ty = Ty::Refused("inline messages are not supported: give chat_id and message_id");

/// Values of `sendChatAction`'s `action`.
pub const CHAT_ACTIONS: &[&str] = &[
    "typing",
    "upload_photo",
    "record_video",
    "upload_video",
    "record_voice",
    "upload_voice",
    "upload_document",
    "choose_sticker",
    "find_location",
    "record_video_note",
    "upload_video_note",
];
/// Values of `sendDice`'s `emoji` (the football with and without its variation selector).
pub const DICE: &[&str] = &["🎲", "🎯", "🏀", "⚽", "⚽\u{fe0f}", "🎳", "🎰"];

/// What every message-sending method takes.
const CORE: &[Param] = &[
    req("chat_id", Ty::Chat),
    opt("business_connection_id", Ty::Str),
    opt("message_thread_id", Ty::Id),
    opt("disable_notification", Ty::Bool),
    opt("protect_content", Ty::Bool),
    opt("allow_paid_broadcast", Ty::Bool),
    opt("message_effect_id", Ty::Str),
    opt("reply_parameters", Ty::ReplyParameters),
];
/// Channel direct-messages chats.
const DIRECT: &[Param] = &[opt("direct_messages_topic_id", Ty::Id)];
const SUGGESTED: &[Param] = &[opt("suggested_post_parameters", Ty::Object)];
const KEYBOARD: &[Param] = &[opt("reply_markup", MARKUP)];
/// A caption and how it is shown.
const CAPTIONED: &[Param] =
    &[opt("caption", CAPTION), opt("parse_mode", Ty::ParseMode), opt("caption_entities", Ty::Entities)];
const ABOVE_AND_SPOILER: &[Param] =
    &[opt("show_caption_above_media", Ty::Bool), opt("has_spoiler", Ty::Bool)];
const DIMENSIONS: &[Param] = &[
    opt("duration", NON_NEGATIVE),
    opt("width", NON_NEGATIVE),
    opt("height", NON_NEGATIVE),
    opt("thumbnail", Ty::Upload),
];
/// Addressing a message to edit, with the edit's optional keyboard.
const EDIT: &[Param] = &[
    req("chat_id", Ty::Chat),
    req("message_id", Ty::Id),
    opt("inline_message_id", INLINE),
    opt("business_connection_id", Ty::Str),
    opt("reply_markup", INLINE_MARKUP),
];
/// Copies and forwards: where from.
const FROM: &[Param] = &[
    req("chat_id", Ty::Chat),
    req("from_chat_id", Ty::Chat),
    opt("message_thread_id", Ty::Id),
    opt("direct_messages_topic_id", Ty::Id),
    opt("disable_notification", Ty::Bool),
    opt("protect_content", Ty::Bool),
];
const LOCATION: &[Param] =
    &[req("latitude", Ty::Float(-90.0, 90.0)), req("longitude", Ty::Float(-180.0, 180.0))];

/// The param of a method that sends one file (`photo` for `sendPhoto`, …).
pub fn file_param(method: Method) -> Option<&'static str> {
    Some(match method {
        Method::SendPhoto => "photo",
        Method::SendVideo => "video",
        Method::SendAnimation => "animation",
        Method::SendAudio => "audio",
        Method::SendVoice => "voice",
        Method::SendVideoNote => "video_note",
        Method::SendDocument => "document",
        Method::SendSticker => "sticker",
        _ => return None,
    })
}

impl Method {
    pub const ALL: [Method; 29] = [
        Method::SendMessage,
        Method::SendPhoto,
        Method::SendVideo,
        Method::SendAnimation,
        Method::SendAudio,
        Method::SendVoice,
        Method::SendVideoNote,
        Method::SendDocument,
        Method::SendSticker,
        Method::SendMediaGroup,
        Method::SendLocation,
        Method::SendVenue,
        Method::SendContact,
        Method::SendPoll,
        Method::SendDice,
        Method::SendChatAction,
        Method::CopyMessage,
        Method::CopyMessages,
        Method::ForwardMessage,
        Method::ForwardMessages,
        Method::EditMessageText,
        Method::EditMessageCaption,
        Method::EditMessageMedia,
        Method::EditMessageReplyMarkup,
        Method::DeleteMessage,
        Method::DeleteMessages,
        Method::PinChatMessage,
        Method::UnpinChatMessage,
        Method::SetMessageReaction,
    ];

    /// Telegram's name of the method, as used in the request URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::SendMessage => "sendMessage",
            Method::SendPhoto => "sendPhoto",
            Method::SendVideo => "sendVideo",
            Method::SendAnimation => "sendAnimation",
            Method::SendAudio => "sendAudio",
            Method::SendVoice => "sendVoice",
            Method::SendVideoNote => "sendVideoNote",
            Method::SendDocument => "sendDocument",
            Method::SendSticker => "sendSticker",
            Method::SendMediaGroup => "sendMediaGroup",
            Method::SendLocation => "sendLocation",
            Method::SendVenue => "sendVenue",
            Method::SendContact => "sendContact",
            Method::SendPoll => "sendPoll",
            Method::SendDice => "sendDice",
            Method::SendChatAction => "sendChatAction",
            Method::CopyMessage => "copyMessage",
            Method::CopyMessages => "copyMessages",
            Method::ForwardMessage => "forwardMessage",
            Method::ForwardMessages => "forwardMessages",
            Method::EditMessageText => "editMessageText",
            Method::EditMessageCaption => "editMessageCaption",
            Method::EditMessageMedia => "editMessageMedia",
            Method::EditMessageReplyMarkup => "editMessageReplyMarkup",
            Method::DeleteMessage => "deleteMessage",
            Method::DeleteMessages => "deleteMessages",
            Method::PinChatMessage => "pinChatMessage",
            Method::UnpinChatMessage => "unpinChatMessage",
            Method::SetMessageReaction => "setMessageReaction",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// Whether the method edits an existing message.
    pub fn is_edit(self) -> bool {
        matches!(
            self,
            Method::EditMessageText
                | Method::EditMessageCaption
                | Method::EditMessageMedia
                | Method::EditMessageReplyMarkup
        )
    }

    /// How the method counts against Telegram's limits, before its params are known: a method
    /// that may send several messages says how many in [`crate::wire::SendRequest::pacing`].
    pub(crate) fn base_pacing(self) -> Pacing {
        match self {
            Method::SendChatAction
            | Method::DeleteMessage
            | Method::DeleteMessages
            | Method::PinChatMessage
            | Method::UnpinChatMessage
            | Method::SetMessageReaction => Pacing::Unpaced,
            m if m.is_edit() => Pacing::ChatOnly,
            _ => Pacing::Messages(1),
        }
    }

    /// The method's parameters, in groups.
    pub(crate) fn params(self) -> &'static [&'static [Param]] {
        match self {
            Method::SendMessage => {
                const P: &[&[Param]] = &[
                    CORE,
                    DIRECT,
                    SUGGESTED,
                    KEYBOARD,
                    &[
                        req("text", TEXT),
                        opt("parse_mode", Ty::ParseMode),
                        opt("entities", Ty::Entities),
                        opt("link_preview_options", Ty::Object),
                    ],
                ];
                P
            }
            Method::SendPhoto => {
                const P: &[&[Param]] = &[
                    CORE,
                    DIRECT,
                    SUGGESTED,
                    KEYBOARD,
                    CAPTIONED,
                    ABOVE_AND_SPOILER,
                    &[req("photo", URL_FILE)],
                ];
                P
            }
            Method::SendVideo => {
                const P: &[&[Param]] = &[
                    CORE,
                    DIRECT,
                    SUGGESTED,
                    KEYBOARD,
                    CAPTIONED,
                    ABOVE_AND_SPOILER,
                    DIMENSIONS,
                    &[
                        req("video", URL_FILE),
                        opt("cover", URL_FILE),
                        opt("start_timestamp", NON_NEGATIVE),
                        opt("supports_streaming", Ty::Bool),
                    ],
                ];
                P
            }
            Method::SendAnimation => {
                const P: &[&[Param]] = &[
                    CORE,
                    DIRECT,
                    SUGGESTED,
                    KEYBOARD,
                    CAPTIONED,
                    ABOVE_AND_SPOILER,
                    DIMENSIONS,
                    &[req("animation", URL_FILE)],
                ];
                P
            }
            Method::SendAudio => {
                const P: &[&[Param]] = &[
                    CORE,
                    DIRECT,
                    SUGGESTED,
                    KEYBOARD,
                    CAPTIONED,
                    &[
                        req("audio", URL_FILE),
                        opt("duration", NON_NEGATIVE),
                        opt("performer", Ty::Str),
                        opt("title", Ty::Str),
                        opt("thumbnail", Ty::Upload),
                    ],
                ];
                P
            }
            Method::SendVoice => {
                const P: &[&[Param]] = &[
                    CORE,
                    DIRECT,
                    SUGGESTED,
                    KEYBOARD,
                    CAPTIONED,
                    &[req("voice", URL_FILE), opt("duration", NON_NEGATIVE)],
                ];
                P
            }
            Method::SendVideoNote => {
                const P: &[&[Param]] = &[
                    CORE,
                    DIRECT,
                    SUGGESTED,
                    KEYBOARD,
                    &[
                        req("video_note", Ty::File { by_url: false }),
                        opt("duration", NON_NEGATIVE),
                        opt("length", NON_NEGATIVE),
                        opt("thumbnail", Ty::Upload),
                    ],
                ];
                P
            }
            Method::SendDocument => {
                const P: &[&[Param]] = &[
                    CORE,
                    DIRECT,
                    SUGGESTED,
                    KEYBOARD,
                    CAPTIONED,
                    &[
                        req("document", URL_FILE),
                        opt("thumbnail", Ty::Upload),
                        opt("disable_content_type_detection", Ty::Bool),
                    ],
                ];
                P
            }
            Method::SendSticker => {
                const P: &[&[Param]] =
                    &[CORE, DIRECT, SUGGESTED, KEYBOARD, &[req("sticker", URL_FILE), opt("emoji", Ty::Str)]];
                P
            }
            Method::SendMediaGroup => {
                const P: &[&[Param]] = &[CORE, DIRECT, &[req("media", Ty::Album)]];
                P
            }
            Method::SendLocation => {
                const P: &[&[Param]] = &[
                    CORE,
                    DIRECT,
                    SUGGESTED,
                    KEYBOARD,
                    LOCATION,
                    &[
                        opt("horizontal_accuracy", Ty::Float(0.0, 1500.0)),
                        opt("live_period", Ty::LivePeriod),
                        opt("heading", Ty::Int(1, 360)),
                        opt("proximity_alert_radius", Ty::Int(1, 100_000)),
                    ],
                ];
                P
            }
            Method::SendVenue => {
                const P: &[&[Param]] = &[
                    CORE,
                    DIRECT,
                    SUGGESTED,
                    KEYBOARD,
                    LOCATION,
                    &[
                        req("title", Ty::Str),
                        req("address", Ty::Str),
                        opt("foursquare_id", Ty::Str),
                        opt("foursquare_type", Ty::Str),
                        opt("google_place_id", Ty::Str),
                        opt("google_place_type", Ty::Str),
                    ],
                ];
                P
            }
            Method::SendContact => {
                const P: &[&[Param]] = &[
                    CORE,
                    DIRECT,
                    SUGGESTED,
                    KEYBOARD,
                    &[
                        req("phone_number", Ty::Str),
                        req("first_name", Ty::Str),
                        opt("last_name", Ty::Str),
                        opt("vcard", Ty::Bytes(2048)),
                    ],
                ];
                P
            }
            Method::SendPoll => {
                const P: &[&[Param]] = &[
                    CORE,
                    KEYBOARD,
                    &[
                        req("question", Ty::Text { min: 1, max: 300, mode: "question_parse_mode" }),
                        opt("question_parse_mode", Ty::ParseMode),
                        opt("question_entities", Ty::Entities),
                        req("options", Ty::PollOptions),
                        opt("is_anonymous", Ty::Bool),
                        opt("type", Ty::OneOf(&["regular", "quiz"])),
                        opt("allows_multiple_answers", Ty::Bool),
                        opt("correct_option_ids", Ty::IntList),
                        opt("correct_option_id", Ty::Int(0, 11)),
                        opt("explanation", Ty::Text { min: 0, max: 200, mode: "explanation_parse_mode" }),
                        opt("explanation_parse_mode", Ty::ParseMode),
                        opt("explanation_entities", Ty::Entities),
                        opt("description", Ty::Text { min: 0, max: 1024, mode: "description_parse_mode" }),
                        opt("description_parse_mode", Ty::ParseMode),
                        opt("description_entities", Ty::Entities),
                        opt("open_period", Ty::Int(5, 2_628_000)),
                        opt("close_date", NON_NEGATIVE),
                        opt("is_closed", Ty::Bool),
                    ],
                ];
                P
            }
            Method::SendDice => {
                const P: &[&[Param]] = &[CORE, DIRECT, SUGGESTED, KEYBOARD, &[opt("emoji", Ty::OneOf(DICE))]];
                P
            }
            Method::SendChatAction => {
                const P: &[&[Param]] = &[&[
                    req("chat_id", Ty::Chat),
                    req("action", Ty::OneOf(CHAT_ACTIONS)),
                    opt("business_connection_id", Ty::Str),
                    opt("message_thread_id", Ty::Id),
                ]];
                P
            }
            Method::CopyMessage => {
                const P: &[&[Param]] = &[
                    FROM,
                    CAPTIONED,
                    &[
                        req("message_id", Ty::Id),
                        opt("video_start_timestamp", NON_NEGATIVE),
                        opt("show_caption_above_media", Ty::Bool),
                        opt("allow_paid_broadcast", Ty::Bool),
                        opt("message_effect_id", Ty::Str),
                        opt("suggested_post_parameters", Ty::Object),
                        opt("reply_parameters", Ty::ReplyParameters),
                        opt("reply_markup", MARKUP),
                    ],
                ];
                P
            }
            Method::CopyMessages => {
                const P: &[&[Param]] = &[
                    FROM,
                    &[
                        req("message_ids", Ty::MessageIds { increasing: true }),
                        opt("remove_caption", Ty::Bool),
                    ],
                ];
                P
            }
            Method::ForwardMessage => {
                const P: &[&[Param]] = &[
                    FROM,
                    &[
                        req("message_id", Ty::Id),
                        opt("video_start_timestamp", NON_NEGATIVE),
                        opt("message_effect_id", Ty::Str),
                        opt("suggested_post_parameters", Ty::Object),
                    ],
                ];
                P
            }
            Method::ForwardMessages => {
                const P: &[&[Param]] = &[FROM, &[req("message_ids", Ty::MessageIds { increasing: true })]];
                P
            }
            Method::EditMessageText => {
                const P: &[&[Param]] = &[
                    EDIT,
                    &[
                        req("text", TEXT),
                        opt("parse_mode", Ty::ParseMode),
                        opt("entities", Ty::Entities),
                        opt("link_preview_options", Ty::Object),
                    ],
                ];
                P
            }
            Method::EditMessageCaption => {
                const P: &[&[Param]] = &[EDIT, CAPTIONED, &[opt("show_caption_above_media", Ty::Bool)]];
                P
            }
            Method::EditMessageMedia => {
                const P: &[&[Param]] = &[EDIT, &[req("media", Ty::InputMedia)]];
                P
            }
            Method::EditMessageReplyMarkup => {
                const P: &[&[Param]] = &[EDIT];
                P
            }
            Method::DeleteMessage => {
                const P: &[&[Param]] = &[&[req("chat_id", Ty::Chat), req("message_id", Ty::Id)]];
                P
            }
            Method::DeleteMessages => {
                const P: &[&[Param]] =
                    &[&[req("chat_id", Ty::Chat), req("message_ids", Ty::MessageIds { increasing: false })]];
                P
            }
            Method::PinChatMessage => {
                const P: &[&[Param]] = &[&[
                    req("chat_id", Ty::Chat),
                    req("message_id", Ty::Id),
                    opt("business_connection_id", Ty::Str),
                    opt("disable_notification", Ty::Bool),
                ]];
                P
            }
            Method::UnpinChatMessage => {
                const P: &[&[Param]] = &[&[
                    req("chat_id", Ty::Chat),
                    opt("message_id", Ty::Id),
                    opt("business_connection_id", Ty::Str),
                ]];
                P
            }
            Method::SetMessageReaction => {
                const P: &[&[Param]] = &[&[
                    req("chat_id", Ty::Chat),
                    req("message_id", Ty::Id),
                    opt("reaction", Ty::Reactions),
                    opt("is_big", Ty::Bool),
                ]];
                P
            }
        }
    }

    /// The parameter `name` of this method, if this version knows it.
    pub(crate) fn param(self, name: &str) -> Option<Param> {
        self.params().iter().flat_map(|group| group.iter()).find(|p| p.name == name).copied()
    }

    /// The names of every parameter this version knows for the method.
    pub fn param_names(self) -> impl Iterator<Item = &'static str> {
        self.params().iter().flat_map(|group| group.iter()).map(|p| p.name)
    }

    /// The names of the method's required parameters.
    pub fn required(self) -> impl Iterator<Item = &'static str> {
        self.params().iter().flat_map(|group| group.iter()).filter(|p| p.required).map(|p| p.name)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_needs_a_chat_and_names_each_parameter_once() {
        for method in Method::ALL {
            assert_eq!(Method::from_name(method.as_str()), Some(method));
            assert!(method.required().any(|p| p == "chat_id"), "{method}: pacing needs chat_id");
            let mut names: Vec<&str> = method.param_names().collect();
            let count = names.len();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), count, "{method} lists a parameter twice");
        }
        assert_eq!(Method::from_name("getUpdates"), None);
    }
}
